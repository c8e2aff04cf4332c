"""`--impl hf` says why it cannot run a case: "transformers has no model for this config" only
where transformers has none; a weight float32 cannot hold (a float64 value beyond its range,
which `to_hf(dtype="float32")` refuses rather than write inf) is named as such."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from lmref.conformance.cases import case_config  # noqa: E402
from lmref.convert.hf_adapter import HFAdapter  # noqa: E402
from lmref.spec import init_params  # noqa: E402


def _llama_params(value: float):
    config = case_config("llama3")
    params = {name: weight.astype(np.float64) for name, weight in init_params(config, 1).items()}
    params["layers.0.attn.wq"][0, 0] = value
    return config, params


def test_a_weight_beyond_float32_is_not_supported_naming_the_tensor_not_a_missing_model():
    config, params = _llama_params(1e39)
    with pytest.raises(NotImplementedError) as info:
        HFAdapter().build_model(config, params)
    message = str(info.value)
    assert message.startswith("the hf backend runs in float32, and these weights cannot be written as float32: ")
    assert "tensor 'model.layers.0.self_attn.q_proj.weight' does not fit float32" in message
    assert "largest magnitude is 1e+39" in message
    assert "no model" not in message


def test_a_config_without_a_transformers_type_still_says_transformers_has_no_model():
    config, params = _llama_params(1.0)
    with pytest.raises(NotImplementedError, match="^transformers has no model for this config: .*hf_model_type"):
        HFAdapter().build_model(dataclasses.replace(config, hf_model_type=None), params)


def test_a_float64_case_within_float32_still_builds():
    config, params = _llama_params(3e38)
    assert HFAdapter().build_model(config, params) is not None
