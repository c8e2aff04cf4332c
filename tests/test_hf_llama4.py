"""Llama 4 text models in Hugging Face form (`llama4_text`, convert/models/llama4_text.py; needs
torch and transformers; nothing is downloaded).

The tables every type runs hold Llama 4 too: exact round trips and the halves layout
(tests/test_hf_convert.py), the presets and variants in true float64 (tests/test_hf_float64.py),
`--impl hf` on every golden check, the loss, and checkpoints 5.23 saved read and written back bit
for bit (tests/test_hf_moe.py), the published configs (tests/test_hf_real_configs.py), and
transformers 4.57 (tests/test_hf_transformers4.py).  Here, what only Llama 4 has: the golden
against transformers in true float64 on positions past the tiny chunk and temperature floor,
with both knobs shown to act there; the layer rules of `Llama4TextConfig.__post_init__`; the
routing read from the router's scores, a broken router caught by name; and each refusal naming
its field.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lmref import impl_numpy  # noqa: E402
from lmref.conformance.cases import case_config  # noqa: E402
from lmref.conformance.metrics import compare, gate  # noqa: E402
from lmref.conformance.runner import FAIL, NOT_SUPPORTED, run_check  # noqa: E402
from lmref.conformance.store import GoldenStore  # noqa: E402
from lmref.conformance.tolerances import DEFAULT_ROWS  # noqa: E402
from lmref.convert import ConversionError, config_from_hf, hf_config, to_hf  # noqa: E402
from lmref.convert.hf_adapter import HFAdapter  # noqa: E402
from lmref.spec import RopeScaling, init_params, tiny  # noqa: E402

from tests.hf_configs import moe_variant  # noqa: E402
from tests.test_hf_float64 import transformers_float64  # noqa: E402

F64 = DEFAULT_ROWS["float64"]
ARCHS = ["llama4-scout", "llama4-maverick"]


@pytest.fixture(scope="module")
def store():
    return GoldenStore()


def _relative_max(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("arch", ARCHS)
def test_transformers_is_the_golden_in_float64_past_the_chunk_and_the_temperature_floor(arch, tmp_path):
    """48 positions: ten chunks of the tiny 4, and queries of the NoPE layer scaled by up to
    log1p(floor(48 / 4)) * 0.1 + 1 = 1.26.  Both knobs move the golden's logits by far more than
    transformers differs from it (about 1e-14), so neither can be silently off."""
    config = case_config(arch)
    assert (config.attn_chunk_size, config.attn_temperature_floor) == (4, 4)
    params = init_params(config, 5)
    to_hf(config, params, tmp_path)
    tokens = np.random.default_rng(2).integers(0, config.vocab_size, size=(2, 48))
    golden = impl_numpy.forward(config, params, tokens)
    got = transformers_float64(tmp_path, tokens).logits.numpy()
    assert _relative_max(got, golden) < 1e-10
    assert gate(compare(got, golden, F64), F64) == []
    for knob in (dict(attn_chunk_size=64), dict(attn_temperature_floor=None, attn_temperature_scale=None)):
        moved = impl_numpy.forward(dataclasses.replace(config, **knob), params, tokens)
        assert _relative_max(moved, golden) > 1e-3, knob


LAYER_RULES = [  # Llama4TextConfig keys -> what __post_init__ derives
    dict(num_hidden_layers=8),  # every 4th layer NoPE, every layer a mixture
    dict(num_hidden_layers=6, no_rope_layer_interval=3, interleave_moe_layer_step=2),
    dict(num_hidden_layers=5, no_rope_layers=[], interleave_moe_layer_step=3),  # [] means the interval's
    dict(num_hidden_layers=4, no_rope_layers=[0, 1, 1, 0], moe_layers=[0, 3]),
    # a RoPE layer with the causal mask; layer_types overrides the mask, not the rotation
    dict(num_hidden_layers=4, layer_types=["chunked_attention", "full_attention"] * 2, moe_layers=[2]),
]


@pytest.mark.parametrize("data", LAYER_RULES)
def test_the_layers_are_transformers_layers(data):
    expected = transformers.Llama4TextConfig(**data)
    config = config_from_hf(dict(model_type="llama4_text", **data), "x")
    kinds = {(1, "chunked_attention"): "chunked", (0, "full_attention"): "global_nope",
             (1, "full_attention"): "global"}
    assert config.layer_attn_kinds == tuple(kinds[pair] for pair in zip(expected.no_rope_layers,
                                                                          expected.layer_types, strict=True))
    assert [i for i, kind in enumerate(config.layer_mlp_kinds) if kind == "moe"] == expected.moe_layers
    written = transformers.Llama4TextConfig(**{k: v for k, v in hf_config(config).items()
                                               if k not in ("model_type", "architectures", "lmref_name")})
    assert (written.no_rope_layers, written.layer_types, written.moe_layers) == (
        expected.no_rope_layers, expected.layer_types, expected.moe_layers)


def test_the_hubs_integer_temperature_flag_is_read_as_its_truth_value():
    """The Hub's files say attn_temperature_tuning 4; transformers 4.x runs any truthy value,
    5.23 takes a bool and refuses the int (tests/test_hf_real_configs.py)."""
    on = config_from_hf(dict(model_type="llama4_text", attn_temperature_tuning=4), "x")
    off = config_from_hf(dict(model_type="llama4_text", attn_temperature_tuning=0), "x")
    assert (on.attn_temperature_floor, on.attn_temperature_scale) == (8192, 0.1)
    assert (off.attn_temperature_floor, off.attn_temperature_scale) == (None, None)
    assert hf_config(on)["attn_temperature_tuning"] is True


def test_a_temperature_without_a_scale_is_written_as_attn_scale_0():
    config = tiny("llama4-scout", attn_temperature_scale=None)
    data = hf_config(config)
    assert (data["attn_temperature_tuning"], data["floor_scale"], data["attn_scale"]) == (True, 4, 0.0)
    assert config_from_hf(json.loads(json.dumps(data)), "x") == config


class SwappedRouterRows(HFAdapter):
    """transformers with layer 1's router rows of experts 12 and 14 swapped (the golden sends
    tokens of llama4-scout/prefill-b2-s7 to both there)."""

    name = "hf-swapped-router"

    def build_model(self, config, params):
        model = super().build_model(config, params)
        with torch.no_grad():
            weight = model.get_submodule("model.layers.1.feed_forward.router").weight  # [E, d]
            weight[[12, 14]] = weight[[14, 12]]
        return model


def test_a_broken_router_fails_routing_and_capture_at_its_layer(store):
    """Llama4TextMoe sends every token to every expert, scaled by the router's scores (0 for
    the experts not chosen): the adapter reads the choice from those scores."""
    case = store.load("llama4-scout", "prefill-b2-s7")
    assert {12, 14} <= set(case.expected["routing.layers.1"][..., 0].ravel().tolist())
    assert run_check(case, HFAdapter(), "routing").status != FAIL
    routing = run_check(case, SwappedRouterRows(), "routing")
    assert routing.status == FAIL and "layers.1, batch" in routing.message
    capture = run_check(case, SwappedRouterRows(), "capture")
    assert capture.status == FAIL and capture.metrics["first"] == "layers.1.router"


@pytest.mark.parametrize("changes, named", [
    (dict(aux_loss_coef=0.01), "moe.aux_loss"),  # Llama4ForCausalLM adds none
    (dict(router="softmax_topk"), "moe.softmax_topk"),
])
def test_what_llama4_cannot_compute_is_not_supported_by_name(store, changes, named):
    case = store.load("llama4-maverick", "prefill-b2-s7")
    config = dataclasses.replace(case.config, moe=dataclasses.replace(case.config.moe, **changes))
    result = run_check(dataclasses.replace(case, config=config), HFAdapter(), "forward")
    assert result.status == NOT_SUPPORTED and named in result.message, result.message


REFUSED_TO_HF = {
    "aux-loss": (moe_variant("llama4-scout", dict(aux_loss_coef=0.01)),
                 "moe.aux_loss_coef: 0.01 (transformers' llama4_text has 0.0)"),
    "softmax-router": (moe_variant("llama4-scout", dict(router="softmax_topk")),
                       "moe.router: 'softmax_topk' (transformers' llama4_text has 'sigmoid_topk')"),
    "router-scales-output": (moe_variant("llama4-scout", dict(router_scales_input=False)),
                             "moe.router_scales_input: False (transformers' llama4_text has True)"),
    "renormalized": (moe_variant("llama4-scout", dict(renormalize=True)),
                     "moe.renormalize: True (transformers' llama4_text has False)"),
    "no-shared-expert": (moe_variant("llama4-scout", dict(n_shared_experts=0)),
                         "moe.shared_d_ff: Llama 4 always adds one shared expert as wide as an expert (205), got "
                         "width 0"),
    "wider-shared-expert": (moe_variant("llama4-scout", dict(shared_d_ff=300)), "got width 300"),
    "gated-shared-expert": (moe_variant("llama4-scout", dict(shared_expert_gate=True)),
                            "moe.shared_expert_gate: True (transformers' llama4_text has False)"),
    "dense": (tiny("llama4-scout", mlp_pattern=("dense",), moe=None),
              "moe: transformers' llama4_text is a mixture of experts; this config has none"),
    "sliding": (tiny("llama4-scout", attn_pattern=("sliding", "global_nope"), sliding_window=4, attn_chunk_size=None),
                "attn_pattern: Llama 4's layers are chunked, global_nope, global"),
    "per-head-qk-norm": (tiny("llama4-scout", qk_norm="per_head"), "qk_norm: Llama 4's use_qk_norm is the weightless"),
    "biases": (tiny("llama4-scout", qkv_bias=True), "qkv_bias=True (transformers' llama4_text has False)"),
    "partial-rope": (tiny("llama4-scout", rope_fraction=0.5), "rope_fraction=0.5"),
    "linear-rope": (tiny("llama4-scout", rope_scaling=RopeScaling(kind="linear", factor=2.0)),
                    "rope_scaling: kind 'linear': transformers 4.x runs every Llama 4 rope_scaling as llama3"),
}


@pytest.mark.parametrize("key", sorted(REFUSED_TO_HF))
def test_a_config_llama4_cannot_express_is_refused_naming_the_field(key):
    config, named = REFUSED_TO_HF[key]
    with pytest.raises(ConversionError) as info:
        hf_config(config)
    assert named in str(info.value)


REFUSED_FROM_HF = [
    ("layer_types", ["chunked_attention"] * 4, "with no_rope_layers=[1, 1, 1, 0] a NoPE layer is chunked"),
    ("layer_types", ["sliding_attention"] * 4, "each one of 'chunked_attention', 'full_attention'"),
    ("no_rope_layers", [1, 1, 0], "expected a list of at least num_hidden_layers (4) entries"),
    ("no_rope_layers", [1, 2, 1, 0], "each one of 0, 1"),
    ("moe_layers", [], "no layer is a mixture of experts"),
    ("attention_bias", True, "attention_bias=True is not supported: transformers 4.x hard-codes no attention bias"),
    ("for_llm_compressor", True, "for_llm_compressor=True is not supported"),
    ("attn_temperature_tuning", "yes", "attn_temperature_tuning='yes' is not supported: expected a bool"),
    ("use_qk_norm", "l2", "use_qk_norm='l2' is not supported: expected a bool"),
    ("attention_chunk_size", None, "attention_chunk_size=None is not supported: chunked layers need"),
    ("rope_parameters", {"rope_type": "yarn", "factor": 2.0, "rope_theta": 5e5}, "rope_type='yarn'"),
    ("rope_parameters", {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5},
     "transformers 4.x runs every Llama 4 rope_scaling as llama3"),
    ("frobnicate", 1, "unknown field(s) frobnicate"),
]


@pytest.mark.parametrize("field, value, named", REFUSED_FROM_HF, ids=[f"{f}-{v}" for f, v, _ in REFUSED_FROM_HF])
def test_a_config_json_lmref_cannot_read_is_refused_naming_the_field(field, value, named):
    data = json.loads(json.dumps(hf_config(case_config("llama4-scout"))))
    data.pop("rope_scaling")  # the legacy copy would disagree with an edited rope_parameters
    data[field] = value
    with pytest.raises(ConversionError) as info:
        config_from_hf(data, "x")
    assert named in str(info.value)
