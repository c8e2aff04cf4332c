"""issue 10, item 16: a Hugging Face directory written by `lmref convert --to-hf` loads with the
same numbers in transformers 4.x as in the pinned 5.x.

transformers 4.57 (the last 4.x) reads a llama-style RoPE from `rope_theta` and `rope_scaling`
and ignores 5.x's `rope_parameters`: a directory carrying only the latter ran there with
theta 10000, logits off by up to 2.9.  Every convertible preset's golden case config is
exported and run by transformers 4.57.1 in a child process (tests/transformers4.txt, installed
by `make install` into .venv/transformers4, first on the child's PYTHONPATH), on the long
case's tokens (past a RoPE scaling's original context), and must agree with the golden within
the float32 row.  So must the converter variants of tests/hf_configs.py (their golden computed
here), which switch on what the presets leave off: Qwen's sliding layers, Gemma 3's layers
without a window, interleaved RoPE with q/k norms, mixtures with dense layers, ...  A mixture
of experts runs on tokens no float32 rounding can re-route (tests/hf_configs.py `tokens_for`),
24 of them: the golden picks them one at a time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from lmref import impl_numpy  # noqa: E402
from lmref.conformance.metrics import compare, gate  # noqa: E402
from lmref.conformance.store import GoldenStore  # noqa: E402
from lmref.conformance.tolerances import DEFAULT_ROWS  # noqa: E402
from lmref.convert import to_hf  # noqa: E402
from lmref.convert.hf import auto_class_name  # noqa: E402
from lmref.spec import PRESETS, init_params  # noqa: E402

from tests.hf_configs import OTHER_LAYOUT, VARIANTS, tokens_for  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TRANSFORMERS4 = ROOT / ".venv" / "transformers4"
ARCHS = [name for name, config in PRESETS.items() if config.hf_model_type is not None]
# Variants whose export means another model in 4.57, or one 4.57 refuses, on purpose: lmref maps 5.x.
DIFFERENT_IN_4 = {
    # 4.57's eager Qwen2-MoE slides every layer once use_sliding_window is on; 5.x follows layer_types
    "qwen2-moe-dense-first-sliding-even-renormalized",
    # 4.57's Phi3Config takes only type, short_factor and long_factor (`_rope_scaling_validation`):
    # it derives LongRoPE's attention factor from the context lengths and refuses a file with its own
    "phi3-gqa-tied-partial-longrope-own-attention-factor",
}
OTHERS = {key: config for key, config in (VARIANTS | OTHER_LAYOUT).items() if key not in DIFFERENT_IN_4}
F32 = DEFAULT_ROWS["float32"]

# Each directory names the Auto class that loads it (convert/hf.py `auto_class_name`; llava's
# AutoModelForImageTextToText, which 4.57 has too) in auto_class.txt.
CHILD = """
import sys
from pathlib import Path
import numpy as np
import torch
import transformers
assert transformers.__version__.startswith("4."), transformers.__version__
for directory in map(Path, sys.argv[1:]):
    auto_class = getattr(transformers, (directory / "auto_class.txt").read_text())
    model = auto_class.from_pretrained(
        directory, attn_implementation="eager", torch_dtype=torch.float32).eval()
    tokens = torch.from_numpy(np.load(directory / "tokens.npy", allow_pickle=False))
    with torch.no_grad():
        np.save(directory / "logits4.npy", model(input_ids=tokens).logits.numpy(), allow_pickle=False)
print(transformers.__version__)
"""


@pytest.fixture(scope="module")
def run_in_transformers4(tmp_path_factory):
    """{preset or variant: (logits from transformers 4.x, golden logits)}."""
    if not (TRANSFORMERS4 / "transformers").is_dir():
        pytest.skip(f"transformers 4.x is not installed in {TRANSFORMERS4} (`make install` puts it there)")
    store, golden, directories = GoldenStore(), {}, []
    for arch in ARCHS:
        case = store.load(arch, store.case_names(arch)[-1])  # the long case
        directory = tmp_path_factory.mktemp(arch)
        params = {k: v.astype(np.float32) for k, v in init_params(case.config, case.meta["weights"]["seed"]).items()}
        to_hf(case.config, params, directory / "hf")
        np.save(directory / "hf" / "tokens.npy", case.tokens, allow_pickle=False)
        (directory / "hf" / "auto_class.txt").write_text(auto_class_name(case.config.hf_model_type))
        golden[arch] = case.expected["logits"]
        directories.append(directory / "hf")
    for key, config in OTHERS.items():
        directory = tmp_path_factory.mktemp(key) / "hf"
        params = init_params(config, 4)
        to_hf(config, {k: v.astype(np.float32) for k, v in params.items()}, directory)
        tokens = tokens_for(key, config, params, 160 if config.moe is None else 24)
        np.save(directory / "tokens.npy", tokens, allow_pickle=False)
        (directory / "auto_class.txt").write_text(auto_class_name(config.hf_model_type))
        golden[key] = impl_numpy.forward(config, params, tokens)
        directories.append(directory)
    env = dict(os.environ, PYTHONPATH=str(TRANSFORMERS4), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, *map(str, directories)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith("4.57"), proc.stdout
    return {arch: (np.load(d / "logits4.npy", allow_pickle=False), golden[arch])
            for arch, d in zip(golden, directories, strict=True)}


@pytest.mark.parametrize("arch", ARCHS + sorted(OTHERS))
def test_transformers4_loads_the_export_with_the_golden_numbers(run_in_transformers4, arch):
    logits, golden = run_in_transformers4[arch]
    assert gate(compare(logits, golden, F32), F32) == [], arch
