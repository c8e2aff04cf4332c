"""Time and memory of `lmref verify`'s golden on Llama-3-8B, from one layer, extrapolated to 32.

    python benchmarks/verify_8b_layer.py                 # the real sizes (about 3 GB on disk in /tmp)
    python benchmarks/verify_8b_layer.py --vocab 32000   # a quicker trial

Writes a one-layer Llama-3-8B checkpoint (d_model 4096, 32 heads, 8 KV heads, d_ff 14336, vocab
128,256, untied head; random bfloat16 weights, as the hub's files are stored) with the config.json
`convert.hf_config` writes, into a temporary directory removed at the end.  Then runs the stages of
conformance/verify.py `layered_forward` on the fixed 8-token prompt, each reading its own weights
from the file (BF16 -> float64) and computing: the embedding, the decoder layer, the final norm
and head.  Each stage runs twice: once for its wall time, once under tracemalloc for its peak of
traced allocations (NumPy reports its buffers to tracemalloc), which is the memory the stage adds
to the interpreter.  Time extrapolates as embed + 32 x layer + head; memory as the largest stage,
since each stage drops its weights before the next reads (tests/test_verify.py checks that).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from lmref.conformance.verify import embed_step, head_step, layer_step, fixed_prompt
from lmref.conformance.verify_weights import LayeredCheckpoint
from lmref.convert.hf import hf_config, module_for
from lmref.convert.layout import expected_shapes
from lmref.spec.params import param_shapes
from lmref.spec.plan import layer_plan
from lmref.spec.presets import get_preset

N_LAYERS = 32  # Llama-3-8B (spec/presets/llama.py)
GB = 1e9


def write_one_layer(directory: Path, vocab: int) -> None:
    """config.json and model.safetensors of Llama-3-8B cut to one layer, random bfloat16 weights."""
    config = dataclasses.replace(get_preset("llama3"), n_layers=1, vocab_size=vocab)
    shapes = expected_shapes(module_for(config).entries(config), param_shapes(config))
    generator = torch.Generator().manual_seed(0)
    tensors = {key: (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
               for key, shape in shapes.items()}
    (directory / "config.json").write_text(json.dumps(hf_config(config)))
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


def measure(stage) -> tuple[float, float]:
    """(seconds, peak traced GB) of stage(), run once untraced for the time and once traced."""
    start = time.perf_counter()
    stage()
    seconds = time.perf_counter() - start
    tracemalloc.start()
    stage()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak / GB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=128_256, help="the vocabulary (default: Llama-3's)")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="lmref-verify-8b-"))
    try:
        start = time.perf_counter()
        write_one_layer(directory, args.vocab)
        print(f"wrote the one-layer checkpoint in {time.perf_counter() - start:.1f} s "
              f"({(directory / 'model.safetensors').stat().st_size / GB:.2f} GB)")
        checkpoint = LayeredCheckpoint(directory)
        tokens = fixed_prompt(args.vocab)
        positions = np.arange(tokens.shape[1])
        h = embed_step(checkpoint, tokens, positions)
        plan = layer_plan(checkpoint.config)[0]
        stages = {"embed": lambda: embed_step(checkpoint, tokens, positions),
                  "layer": lambda: layer_step(checkpoint, plan, h, positions, None),
                  "head": lambda: head_step(checkpoint, h, None)}
        results = {name: measure(stage) for name, stage in stages.items()}
    finally:
        shutil.rmtree(directory)
    for name, (seconds, peak) in results.items():
        print(f"{name:6} {seconds:7.2f} s   peak {peak:6.2f} GB")
    total = results["embed"][0] + N_LAYERS * results["layer"][0] + results["head"][0]
    peak = max(p for _, p in results.values())
    print(f"extrapolated to {N_LAYERS} layers, prompt {tokens.shape[1]} tokens: {total:.0f} s, "
          f"peak {peak:.2f} GB over the interpreter ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, numpy {np.__version__})")


if __name__ == "__main__":
    main()
