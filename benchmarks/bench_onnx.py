"""onnxruntime against torch eager on the same model, side by side in one run: per-token
decode latency (batch 1, through each one's KV cache) and prefill throughput.

    python benchmarks/bench_onnx.py                    # ~9M LLaMA-style model, CPU
    python benchmarks/bench_onnx.py --prompt 256 --steps 128 --repeats 5 --threads 1

The model is lmref's own export (export/exporter.py, opset 18, float32) of a LLaMA 3-style
config (GQA, RoPE, SwiGLU, RMSNorm).  CPU: onnxruntime's CPU provider against
impl_torch.Transformer (SDPA, static KV cache), both with torch's thread count.  Ratios are
onnxruntime / torch: for latency below 1 means onnxruntime is faster, for throughput above 1
does.  Where onnxruntime has
the CUDA provider, the same runs on the GPU: onnxruntime with IOBinding (the inputs, and the
presents fed back as the next step's past, stay on the device; without it, host copies make
onnxruntime look slow: huggingface/optimum#1337) against torch on CUDA.
Tests never time; results are recorded in benchmarks/README.md, section ONNX.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from collections.abc import Callable

import numpy as np
import torch

from timing import timed  # benchmarks/timing.py, beside this script
from lmref.export.exporter import export_onnx
from lmref.export.runtime import CPU, CUDA, DecoderSession, available_providers, open_session
from lmref.impl_torch import Transformer
from lmref.spec.config import ModelConfig
from lmref.spec.params import init_params, param_count
from lmref.spec.presets import get_preset


def bench_config() -> ModelConfig:
    """A ~9M-parameter LLaMA 3-style model (bench_twins.py's "small" LLaMA, vocab 8192)."""
    return dataclasses.replace(get_preset("llama3"), name="llama-9m", vocab_size=8192, d_model=256, n_layers=6,
                               n_heads=8, n_kv_heads=2, head_dim=32, d_ff=896, max_seq_len=1024)


# --- onnxruntime --------------------------------------------------------------------------------


def ort_decode(session: DecoderSession, prompt: np.ndarray, steps: int) -> Callable[[], None]:
    """Prefill `prompt` [1, P] from an empty past, then `steps` single-token steps."""
    def run():
        mask = np.ones((1, prompt.shape[1] + steps), np.int64)
        logits, past = session.step(prompt, mask[:, : prompt.shape[1]], session.empty_past(1))
        for t in range(steps):
            token = logits[:, -1:].argmax(-1)  # [1, 1]
            logits, past = session.step(token, mask[:, : prompt.shape[1] + t + 1], past)
    return run


def ort_cuda_decode(session, config: ModelConfig, prompt: np.ndarray, steps: int) -> Callable[[], None]:
    """The same on CUDA with IOBinding: inputs copied to the device once per step (a few
    int64s), the presents bound on the device and fed back as the next past, no host copy of
    the cache; the next token is the argmax of the logits copied back (1 x vocab floats)."""
    import onnxruntime as ort

    from lmref.export.decoder import input_names, output_names

    names_in, names_out = input_names(config.n_layers), output_names(config.n_layers)

    def step(ids: np.ndarray, mask: np.ndarray, past: list) -> tuple[np.ndarray, list]:
        binding = session.io_binding()
        positions = np.arange(mask.shape[1] - ids.shape[1], mask.shape[1])[None]  # [1, S]
        for name, value in zip(names_in[:3], (ids, mask, positions)):
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value.astype(np.int64), "cuda", 0))
        for name, value in zip(names_in[3:], past):
            binding.bind_ortvalue_input(name, value)
        for name in names_out:
            binding.bind_output(name, "cuda")
        session.run_with_iobinding(binding)
        logits, *present = binding.get_outputs()
        return logits.numpy()[:, -1], present

    def run():
        empty = np.zeros((1, config.n_kv_heads, 0, config.head_dim), np.float32)
        past = [ort.OrtValue.ortvalue_from_numpy(empty, "cuda", 0) for _ in names_in[3:]]
        mask = np.ones((1, prompt.shape[1] + steps), np.int64)
        logits, past = step(prompt, mask[:, : prompt.shape[1]], past)
        for t in range(steps):
            logits, past = step(logits.argmax(-1)[:, None], mask[:, : prompt.shape[1] + t + 1], past)
    return run


# --- torch --------------------------------------------------------------------------------------


def torch_decode(model: Transformer, prompt: torch.Tensor, steps: int) -> Callable[[], None]:
    """impl_torch's own decoding: the static KV cache, one prefill, then single-token steps."""
    @torch.no_grad()
    def run():
        cache = model.new_cache(1, capacity=prompt.shape[1] + steps)
        logits = model(prompt, cache=cache)
        for _ in range(steps):
            logits = model(logits[:, -1:].argmax(-1), cache=cache)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
    return run


def torch_prefill(model: Transformer, prompt: torch.Tensor) -> Callable[[], None]:
    @torch.no_grad()
    def run():
        model(prompt)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
    return run


# --- the run ------------------------------------------------------------------------------------


def per_token(total: float, prefill: float, steps: int) -> float:
    """Seconds per decode step: (prefill + steps) minus the prefill alone, over steps."""
    return max(total - prefill, 0.0) / steps


def row(device: str, what: str, ours: float, peer: float, unit: str, better_low: bool) -> str:
    better = "lower" if better_low else "higher"
    return f"| {device} | {what} | {ours:,.2f} {unit} | {peer:,.2f} {unit} | {ours / peer:.2f} | {better} is better |"


def bench(device: str, session, model: Transformer, config: ModelConfig, args) -> list[str]:
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, config.vocab_size, (1, args.prompt))
    batch_prompt = rng.integers(0, config.vocab_size, (args.batch, args.prompt))
    t_prompt = torch.from_numpy(prompt).to(model.device)
    if device == "cpu":
        decode = DecoderSession(session, config)
        ort_pre, ort_full = (ort_decode(decode, prompt, n) for n in (0, args.steps))
        ort_batch = lambda: decode.step(batch_prompt, np.ones_like(batch_prompt), decode.empty_past(args.batch))
    else:
        ort_pre, ort_full = (ort_cuda_decode(session, config, prompt, n) for n in (0, args.steps))
        ort_batch = ort_cuda_decode(session, config, batch_prompt, 0)
    latency_ort = per_token(timed(ort_full, args.repeats), timed(ort_pre, args.repeats), args.steps)
    latency_torch = per_token(timed(torch_decode(model, t_prompt, args.steps), args.repeats),
                              timed(torch_decode(model, t_prompt, 0), args.repeats), args.steps)
    tokens = args.batch * args.prompt
    tps_ort = tokens / timed(ort_batch, args.repeats)
    tps_torch = tokens / timed(torch_prefill(model, torch.from_numpy(batch_prompt).to(model.device)), args.repeats)
    return [row(device, "decode latency per token (batch 1)", 1e3 * latency_ort, 1e3 * latency_torch, "ms", True),
            row(device, f"prefill throughput ({args.batch}x{args.prompt})", tps_ort, tps_torch, "tok/s", False)]


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens (default 128)")
    parser.add_argument("--steps", type=int, default=64, help="decode steps (default 64)")
    parser.add_argument("--batch", type=int, default=4, help="prefill batch (default 4)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="CPU threads of both (default: torch's); 1 on a machine other jobs share, "
                             "where spinning OpenMP threads stall each other")
    args = parser.parse_args()
    config = bench_config()
    params = init_params(config, 0)
    threads = args.threads
    torch.set_num_threads(threads)
    print(f"{config.name}: {param_count(config) / 1e6:.1f}M params, float32; torch {torch.__version__} "
          f"({threads} threads), onnxruntime {ort.__version__} ({threads} intra-op threads)")
    print("| device | what | onnxruntime | torch eager | onnxruntime / torch | |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as out:
        path = export_onnx(config, params, out)
        model = Transformer.from_canonical(config, params).eval()
        for line in bench("cpu", open_session(path, CPU, threads=threads), model, config, args):
            print(line, flush=True)
        if CUDA in available_providers() and torch.cuda.is_available():
            cuda_model = Transformer.from_canonical(config, params, device="cuda").eval()
            for line in bench("cuda", open_session(path, CUDA), cuda_model, config, args):
                print(line, flush=True)
        else:
            print("(no CUDA: onnxruntime-gpu and a CUDA build of torch are needed for the GPU rows)")


if __name__ == "__main__":
    main()
