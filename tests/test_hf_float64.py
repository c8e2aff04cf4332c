"""The exports against transformers itself, in true float64 (needs torch and transformers).

Every convertible preset's golden-case config, and the variants of tests/hf_configs.py, is
exported with `to_hf` (float64 weights), loaded by `AutoModelForCausalLM.from_pretrained`
(llava: AutoModelForImageTextToText; eager attention) and run on 160 tokens (text: no image
placeholder; tests/test_hf_llava.py runs images); its logits must equal the golden's within the
float64 row of the conformance tolerances.  transformers' float64 model computes norms,
RoPE frequencies and softmax in float32 whatever the model's dtype (`.to(torch.float32)`,
`softmax(..., dtype=torch.float32)`, `inv_freq` built in float32), which alone moves the
logits by about 1e-6; `Float64Mode` rewrites those float32 requests to float64, so what is
left is the converter: a wrong key, a transposed tensor, a misread field, a layer that slides
when it should not.  tests/test_hf_transformers.py checks the other direction (transformers'
own models read by lmref) within the float32 row.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from torch.overrides import TorchFunctionMode  # noqa: E402

from lmref import impl_numpy  # noqa: E402
from lmref.conformance.metrics import compare, gate  # noqa: E402
from lmref.conformance.tolerances import DEFAULT_ROWS  # noqa: E402
from lmref.convert import to_hf  # noqa: E402
from lmref.convert.hf import auto_class_name  # noqa: E402
from lmref.spec import init_params  # noqa: E402

from tests.hf_configs import CONFIGS, OTHER_LAYOUT  # noqa: E402

F64 = DEFAULT_ROWS["float64"]
ALL = CONFIGS | OTHER_LAYOUT


class Float64Mode(TorchFunctionMode):
    """Every float32 a torch call asks for (a `dtype=` argument, `.to(torch.float32)`,
    `Tensor.float()`) becomes float64."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.float:
            return args[0].double()
        if kwargs.get("dtype") is torch.float32:
            kwargs["dtype"] = torch.float64
        args = tuple(torch.float64 if arg is torch.float32 else arg for arg in args)
        return func(*args, **kwargs)


def transformers_float64(directory, tokens: np.ndarray, **inputs):
    """The output of transformers' eager model of `directory` on `tokens`, built and run in
    float64 (the default dtype too, so that buffers made from Python floats, such as Gemma's
    sqrt(d_model) embedding scale, are float64).  Experts run eagerly too: the default
    "grouped_mm" kernel refuses float64 (dense types ignore the option).  The Auto class is the
    type's (`auto_class_name` of config.json's model_type)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with Float64Mode():
            model_type = json.loads((Path(directory) / "config.json").read_text())["model_type"]
            model = getattr(transformers, auto_class_name(model_type)).from_pretrained(
                directory, attn_implementation="eager", experts_implementation="eager", dtype=torch.float64).eval()
            with torch.no_grad():
                return model(input_ids=torch.from_numpy(tokens), **inputs)
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize("key", sorted(ALL))
def test_transformers_runs_the_export_with_the_goldens_float64_logits(key, tmp_path):
    config = ALL[key]
    params = init_params(config, 11)
    to_hf(config, params, tmp_path)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(2, 160))  # > 2x llama3 scalings' contexts
    if config.vision is not None:  # text only: an image placeholder would ask for an image
        tokens[tokens == config.vision.image_token_id] = 0
    golden = impl_numpy.forward(config, params, tokens)
    assert gate(compare(transformers_float64(tmp_path, tokens).logits.numpy(), golden, F64), F64) == [], key


def test_without_the_mode_transformers_float64_is_float32_precise(tmp_path):
    """The reason for Float64Mode: the same export, run plainly, misses the float64 row."""
    config = CONFIGS["llama3"]
    params = init_params(config, 11)
    to_hf(config, params, tmp_path)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(2, 40))
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager",
                                                              dtype=torch.float64).eval()
    with torch.no_grad():
        plain = model(input_ids=torch.from_numpy(tokens)).logits.numpy()
    assert gate(compare(plain, impl_numpy.forward(config, params, tokens), F64), F64) != []
