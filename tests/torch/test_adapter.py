"""TorchAdapter: the conformance suite's adapter protocol on top of the torch twin."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmref import impl_numpy
from lmref.conformance.adapters import load_adapter
from lmref.conformance.store import GoldenStore
from lmref.impl_torch.adapter import TorchAdapter, kernel_name
from lmref.spec import PRESETS, init_params, tiny
from lmref.spec.captures import capture_names
from tests.controls import run_arch
from tests.torch.helpers import BFLOAT16, FLOAT16, FLOAT32, assert_close

CONFIG = tiny("olmo-alibi")
PARAMS = init_params(CONFIG, 1)
TOKENS = np.random.default_rng(1).integers(0, CONFIG.vocab_size, size=(2, 6))
ROWS = {"float32": FLOAT32, "bfloat16": BFLOAT16, "float16": FLOAT16}


@pytest.mark.parametrize("kernel", ["torch", "torch-eager"])
def test_every_golden_check_passes_through_each_attention_kernel(kernel):
    """`--impl torch` runs SDPA, `--impl torch-eager` the eager kernel: the whole golden store
    passes through both, so a mistake in either kernel fails a conformance run."""
    adapter = load_adapter(kernel)
    assert adapter.name == kernel and f"float32, {'sdpa' if kernel == 'torch' else 'eager'}, moe sorted)" in adapter.version
    store = GoldenStore()
    not_passed = [(arch, case, capability, r.status) for arch in PRESETS
                  for case, capability, r in run_arch(adapter, arch, store) if r.status != "PASS"]
    assert not_passed == []


MOE_ARCHS = [arch for arch, config in PRESETS.items() if config.moe is not None]


@pytest.mark.parametrize("kernel, dispatch", [("torch-moe-loop", "loop"), ("torch-moe-dense", "dense")])
def test_every_golden_check_of_the_mixtures_passes_through_each_moe_dispatch(kernel, dispatch):
    """`--impl torch` dispatches tokens to experts sorted by expert; `torch-moe-loop` and
    `torch-moe-dense` run the other two dispatches of impl_torch/moe.py through every golden
    check of every MoE preset (the other presets never reach a dispatch)."""
    adapter = load_adapter(kernel)
    assert adapter.name == kernel and adapter.version.endswith(f"float32, sdpa, moe {dispatch})")
    store = GoldenStore()
    not_passed = [(arch, case, capability, r.status) for arch in MOE_ARCHS
                  for case, capability, r in run_arch(adapter, arch, store) if r.status != "PASS"]
    assert MOE_ARCHS and not_passed == []


def test_kernel_names():
    assert kernel_name("sdpa", "sorted") == "torch" and kernel_name("eager", "sorted") == "torch-eager"
    assert kernel_name("eager", "dense") == "torch-eager-moe-dense"
    with pytest.raises(ValueError, match="moe_dispatch must be one of"):
        TorchAdapter(moe_dispatch="grouped")


def test_identity():
    adapter = TorchAdapter()
    assert TorchAdapter.name == "torch" and TorchAdapter.dtype == "float32" and adapter.dtype == "float32"
    assert torch.__version__ in TorchAdapter.version and torch.__version__ in adapter.version
    with pytest.raises(ValueError, match="dtype must be one of"):
        TorchAdapter("int8")


@pytest.mark.parametrize("dtype", list(ROWS))
def test_forward_decode_loss_match_the_golden(dtype):
    adapter = TorchAdapter(dtype)
    ref = impl_numpy.forward(CONFIG, PARAMS, TOKENS)
    for what, out in [("forward", adapter.forward(CONFIG, PARAMS, TOKENS)),
                      ("decode", adapter.decode(CONFIG, PARAMS, TOKENS, 2))]:
        assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == ref.shape, what
        assert_close(out, ref, ROWS[dtype], f"{dtype} {what}")
    loss, ref_loss = adapter.loss(CONFIG, PARAMS, TOKENS), impl_numpy.loss(CONFIG, PARAMS, TOKENS)
    row = ROWS[dtype]
    assert isinstance(loss, float) and abs(loss - ref_loss) <= row.loss_atol + row.loss_rtol * abs(ref_loss)


def test_capture_names_and_values_match_the_golden():
    ref: dict = {}
    impl_numpy.forward(CONFIG, PARAMS, TOKENS, capture=ref)
    got = TorchAdapter().capture(CONFIG, PARAMS, TOKENS)
    assert list(got) == capture_names(CONFIG)
    for name, value in got.items():
        assert value.dtype == np.float32
        assert_close(value, ref[name], FLOAT32, name)


def test_float64_adapter_returns_float64():
    out = TorchAdapter("float64").forward(CONFIG, PARAMS, TOKENS)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, impl_numpy.forward(CONFIG, PARAMS, TOKENS), rtol=1e-9, atol=1e-9)
