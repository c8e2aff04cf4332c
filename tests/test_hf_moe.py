"""Mixtures of experts in Hugging Face form: mixtral, dbrx, qwen2_moe, qwen3_moe, olmoe,
llama4_text (needs torch and transformers; nothing is downloaded; what only Llama 4 has:
tests/test_hf_llama4.py).

Every type is also in the tables the dense types run: exact round trips
(tests/test_hf_convert.py), the golden's logits against transformers in true float64
(tests/test_hf_float64.py), published configs (tests/test_hf_real_configs.py) and the export
in transformers 4.57 (tests/test_hf_transformers4.py).  Here, what only mixtures have:
`--impl hf` passing every golden check (the routing too, and the loss with its auxiliary
term), a broken router caught by name, checkpoints transformers 5.23 saved (the Hub's
per-expert names) read and written back bit for bit, and each refusal naming its field.
"""

from __future__ import annotations

import dataclasses
import json
import math

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
from lmref.convert import ConversionError, config_from_hf, from_hf, hf_config, to_hf  # noqa: E402
from lmref.convert.hf_adapter import HFAdapter  # noqa: E402
from lmref.convert.moe import transformers_objective  # noqa: E402
from lmref.impl_numpy.moe import load_balancing_loss  # noqa: E402
from lmref.spec import PRESETS, init_params, tiny  # noqa: E402
from lmref.spec.captures import moe_layers  # noqa: E402

from tests.controls import run_arch  # noqa: E402
from tests.hf_checkpoints import assert_same_tensors, written_back  # noqa: E402
from tests.hf_configs import moe_variant  # noqa: E402
from tests.test_hf_float64 import transformers_float64  # noqa: E402
from tests.test_hf_transformers import _numeric_fields  # noqa: E402

F64 = DEFAULT_ROWS["float64"]
MOE_ARCHS = [name for name, config in PRESETS.items() if config.moe is not None and config.hf_model_type]
SMALL = dict(vocab_size=97, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, bos_token_id=None, eos_token_id=None,
             pad_token_id=None)
# transformers models built from config objects: name -> (config class, kwargs)
MODELS = {
    "mixtral-window-top2-of-4": ("MixtralConfig", dict(num_local_experts=4, sliding_window=5, **SMALL)),
    # Qwen2-MoE's rules: layer 1 dense (mlp_only_layers); layer 0 slides (even, below max_window_layers)
    "qwen2-moe-dense-layer-sliding": ("Qwen2MoeConfig", dict(
        num_experts=6, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=24,
        mlp_only_layers=[1], use_sliding_window=True, sliding_window=5, max_window_layers=2, norm_topk_prob=True,
        **SMALL)),
    # decoder_sparse_step 2: layer 0 dense, layer 1 a mixture; a window on every layer
    "qwen3-moe-sparse-step-window-biases": ("Qwen3MoeConfig", dict(
        num_experts=8, num_experts_per_tok=3, moe_intermediate_size=16, head_dim=24, decoder_sparse_step=2,
        use_sliding_window=True, sliding_window=5, attention_bias=True, **SMALL)),
    "olmoe-gqa": ("OlmoeConfig", dict(num_experts=8, num_experts_per_tok=2, **SMALL)),
    # both thetas given (5.23 rotates with rope_parameters, 4.x with attn_config); an active clip
    "dbrx-clip-no-renormalize": ("DbrxConfig", dict(
        d_model=64, n_heads=4, n_layers=2, max_seq_len=128, vocab_size=97,
        rope_parameters={"rope_type": "default", "rope_theta": 5e5},
        attn_config=dict(kv_n_heads=2, clip_qkv=0.5, rope_theta=5e5),
        ffn_config=dict(ffn_hidden_size=24, moe_num_experts=4, moe_top_k=2, moe_normalize_expert_weights=None))),
    # Llama 4: a chunked RoPE layer (chunk 4) then a NoPE one with the temperature from position 3,
    # QK norm, Scout's llama3 RoPE scaling (low = high frequency factor)
    "llama4-scout-like": ("Llama4TextConfig", dict(
        num_local_experts=4, intermediate_size_mlp=40, head_dim=16, attention_chunk_size=4, floor_scale=4,
        attn_scale=0.3, no_rope_layer_interval=2, rope_parameters={
            "rope_type": "llama3", "factor": 16.0, "low_freq_factor": 1.0, "high_freq_factor": 1.0,
            "original_max_position_embeddings": 8, "rope_theta": 5e5}, **SMALL)),
    # layer 0 dense (interleave_moe_layer_step 2) and NoPE, layer 1 top-2 of 6 chunked by 5, no QK norm, tied
    "llama4-maverick-like": ("Llama4TextConfig", dict(
        num_local_experts=6, num_experts_per_tok=2, interleave_moe_layer_step=2, use_qk_norm=False,
        intermediate_size_mlp=40, head_dim=24, attention_chunk_size=5, floor_scale=3, no_rope_layers=[0, 1],
        tie_word_embeddings=True, **SMALL)),
}


@pytest.fixture(scope="module")
def store():
    return GoldenStore()


# The mixtures whose authors' training loss is not transformers' (spec/MATH.md, "MoE"): the
# load-balancing loss per layer (MegaBlocks), and OLMoE's router z-loss.
OWN_OBJECTIVE = {"dbrx": ["moe.aux_loss_per_layer"], "olmoe-1b-7b": ["moe.aux_loss_per_layer", "moe.router_z_loss"]}


def test_the_presets_with_their_own_objective_are_listed():
    assert sorted(OWN_OBJECTIVE) == sorted(name for name in MOE_ARCHS
                                           if PRESETS[name] != transformers_objective(PRESETS[name]))


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_every_golden_check_passes_through_impl_hf(store, arch):
    """transformers' float32 eager experts: forward, decode, loss (with the auxiliary term),
    capture (with each layer's router logits) and routing, against the golden cases; the loss
    of an objective transformers lacks is NOT SUPPORTED, naming it."""
    results = run_arch(HFAdapter(), arch, store)
    refused = [(case, cap) for case, cap, r in results if r.status == NOT_SUPPORTED
               and all(name in r.message for name in OWN_OBJECTIVE.get(arch, ["-"]))]
    assert [(case, cap, r.status) for case, cap, r in results
            if r.status != "PASS" and (case, cap) not in refused] == []
    assert {cap for _, cap, _ in results} == {"forward", "decode", "loss", "capture", "routing"}
    assert {cap for _, cap in refused} <= {"loss"} and bool(refused) == (arch in OWN_OBJECTIVE)
    assert all(r.metrics["missing"] == [] for _, cap, r in results if cap == "capture")


class SwappedRouterRows(HFAdapter):
    """transformers with layer 1's router rows of experts 0 and 1 swapped: each token that
    chose one of the two takes the other."""

    name = "hf-swapped-router"

    def build_model(self, config, params):
        model = super().build_model(config, params)
        with torch.no_grad():
            weight = model.get_submodule("model.layers.1.mlp.gate").weight  # [E, d]
            weight[[0, 1]] = weight[[1, 0]]
        return model


def test_a_broken_router_fails_routing_and_capture_at_its_layer(store):
    case = store.load("mixtral-8x7b", "prefill-b2-s7")
    routing = run_check(case, SwappedRouterRows(), "routing")
    assert routing.status == FAIL and "layers.1, batch" in routing.message
    assert "chose other experts than the golden" in routing.message
    capture = run_check(case, SwappedRouterRows(), "capture")
    assert capture.status == FAIL and capture.metrics["first"] == "layers.1.router"


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_transformers_loss_and_aux_loss_are_the_goldens_in_float64(arch, tmp_path):
    """`labels=` with `output_router_logits=True`: cross-entropy plus router_aux_loss_coef
    (DBRX: moe_loss_weight) times the load-balancing loss of every token's router logits.
    Llama4ForCausalLM has no auxiliary loss (aux_loss None), and lmref's Llama 4 none either.
    DBRX and OLMoE run with transformers' objective (their authors' is refused, above)."""
    config = transformers_objective(case_config(arch))
    params = init_params(config, 3)
    to_hf(config, params, tmp_path)
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, size=(2, 40))
    out = transformers_float64(tmp_path, tokens, labels=torch.from_numpy(tokens), output_router_logits=True)
    captured: dict = {}
    impl_numpy.forward(config, params, tokens, capture=captured)
    aux = load_balancing_loss(config, [captured[f"layers.{i}.router"] for i in moe_layers(config)])
    if config.hf_model_type == "llama4_text":
        assert out.aux_loss is None and config.moe.aux_loss_coef == 0
    else:
        assert float(out.aux_loss) == pytest.approx(aux, rel=0, abs=1e-12)
    assert float(out.loss) == pytest.approx(impl_numpy.loss(config, params, tokens), rel=0, abs=1e-12)


@pytest.mark.parametrize("arch", sorted(OWN_OBJECTIVE))
def test_the_authors_objective_is_not_transformers_loss(arch, tmp_path):
    """The golden's loss of DBRX and OLMoE (their authors' objective) differs from the
    `labels=` loss transformers computes for the same weights, which is the golden's loss of
    transformers' objective; config.json keeps the authors' objective under lmref's keys."""
    config = case_config(arch)
    params = init_params(config, 3)
    to_hf(config, params, tmp_path)
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, size=(2, 40))
    out = transformers_float64(tmp_path, tokens, labels=torch.from_numpy(tokens), output_router_logits=True)
    assert float(out.loss) == pytest.approx(impl_numpy.loss(transformers_objective(config), params, tokens), abs=1e-12)
    assert abs(float(out.loss) - impl_numpy.loss(config, params, tokens)) > 1e-4
    assert from_hf(tmp_path)[0] == config


@pytest.mark.parametrize("changes, named", [
    (dict(qkv_clip=0.5), ["attn.qkv_clip", "field qkv_clip"]),  # transformers clamps after the QK norm
    (dict(moe=dataclasses.replace(case_config("olmoe-1b-7b").moe, router="sigmoid_topk")), ["moe.sigmoid_topk"]),
])
def test_what_olmoe_cannot_compute_is_not_supported_by_name(store, changes, named):
    case = store.load("olmoe-1b-7b", "prefill-b2-s7")
    result = run_check(dataclasses.replace(case, config=dataclasses.replace(case.config, **changes)), HFAdapter(),
                       "forward")
    assert result.status == NOT_SUPPORTED and all(n in result.message for n in named), result.message


@pytest.fixture(scope="module", params=sorted(MODELS))
def saved(request, tmp_path_factory):
    """(name, the directory transformers 5.23's save_pretrained wrote for a tiny model)."""
    config_cls, kwargs = MODELS[request.param]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(getattr(transformers, config_cls)(**kwargs))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the golden's scale (spec/params.py): every component matters
        for name, p in model.named_parameters():
            fan_in = p.shape[-1] if p.ndim >= 2 and "wte" not in name and "embed" not in name else 1
            scale, shift = (0.1, 1.0) if "norm" in name else (1 / math.sqrt(fan_in), 0.0)
            p.copy_(shift + scale * torch.randn(p.shape, generator=gen))
    directory = tmp_path_factory.mktemp(request.param)
    model.eval().save_pretrained(directory)
    return request.param, directory


def test_the_golden_runs_a_saved_checkpoint_as_transformers_does_in_float64(saved):
    """save_pretrained writes the Hub's names (one tensor per expert, Mixtral's block_sparse_moe),
    which from_hf maps key for key (it refuses a missing or an unexpected one)."""
    name, directory = saved
    config, params = from_hf(directory)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(2, 40))
    golden = impl_numpy.forward(config, {k: v.astype(np.float64) for k, v in params.items()}, tokens)
    got = transformers_float64(directory, tokens).logits.numpy()
    assert gate(compare(got, golden, F64), F64) == [], name
    assert np.std(golden) > 0.5


def test_a_saved_checkpoint_is_written_back_bit_for_bit(saved, tmp_path):
    name, directory = saved
    _, original, exported = written_back(directory, tmp_path)
    assert_same_tensors(exported, original, name)
    assert _numeric_fields(tmp_path) == _numeric_fields(directory)


def test_a_dbrx_file_whose_two_thetas_differ_is_refused(tmp_path):
    """5.23 saves the theta it rotates with (rope_parameters, 10000 when the config gives only
    attn_config.rope_theta, as the Hub's files do) beside the one 4.x and Databricks use."""
    config_cls, kwargs = MODELS["dbrx-clip-no-renormalize"]
    kwargs = {key: value for key, value in kwargs.items() if key != "rope_parameters"}
    transformers.AutoModelForCausalLM.from_config(getattr(transformers, config_cls)(**kwargs)).save_pretrained(tmp_path)
    with pytest.raises(ConversionError, match=r"attn_config.rope_theta=500000.0 is not supported: disagrees with "
                                              r"rope_parameters' rope_theta=10000.0: transformers 5.23 rotates"):
        from_hf(tmp_path)


@pytest.mark.parametrize("use, max_window_layers, n_layers", [(True, 3, 5), (True, 28, 4), (False, 28, 4)])
def test_qwen2_moe_slides_even_layers_below_max_window_layers_as_transformers_does(use, max_window_layers, n_layers):
    data = dict(model_type="qwen2_moe", use_sliding_window=use, sliding_window=5, max_window_layers=max_window_layers,
                num_hidden_layers=n_layers)
    expected = transformers.Qwen2MoeConfig(**data).layer_types
    got = config_from_hf(data, "x").layer_attn_kinds
    assert [{"global": "full_attention", "sliding": "sliding_attention"}[k] for k in got] == expected


REFUSED_TO_HF = {
    "olmoe-clip": (tiny("olmoe-1b-7b", qkv_clip=1.0),
                   "qkv_clip: transformers' OlmoeAttention clamps q, k and v after q_norm / k_norm"),
    "dbrx-without-clip": (tiny("dbrx", qkv_clip=None), "qkv_clip: transformers 5.23's DbrxAttention raises"),
    "dbrx-tied": (tiny("dbrx", tie_embeddings=True), "tie_embeddings=True (transformers' dbrx has False)"),
    "mixtral-shared-expert": (moe_variant("mixtral-8x7b", dict(n_shared_experts=1)),
                              "moe.n_shared_experts: 1 (transformers' mixtral has 0)"),
    "mixtral-not-renormalized": (moe_variant("mixtral-8x7b", dict(renormalize=False)),
                                 "moe.renormalize: False (transformers' mixtral has True)"),
    "mixtral-dense-layer": (tiny("mixtral-8x7b", mlp_pattern=("dense", "moe")),
                            "mlp_pattern: every layer of transformers' mixtral is a mixture of experts"),
    "mixtral-own-expert-width": (moe_variant("mixtral-8x7b", dict(d_ff=64)),
                                 "moe.d_ff: 64 (transformers' mixtral has None)"),
    "mistral-as-mixtral": (tiny("mistral-7b", hf_model_type="mixtral"),
                           "moe: transformers' mixtral is a mixture of experts; this config has none"),
    "qwen2-moe-without-shared-expert": (moe_variant("qwen1.5-moe-a2.7b", dict(
        n_shared_experts=0, shared_d_ff=None, shared_expert_gate=False)), "Qwen2-MoE always adds a shared expert"),
    "qwen2-moe-ungated-shared-expert": (moe_variant("qwen1.5-moe-a2.7b", dict(shared_expert_gate=False)),
                                        "moe.shared_expert_gate: False (transformers' qwen2_moe has True)"),
    "qwen3-moe-sigmoid-router": (moe_variant("qwen3-30b-a3b", dict(router="sigmoid_topk")),
                                 "moe.router: 'sigmoid_topk' (transformers' qwen3_moe has 'softmax_topk')"),
    "qwen3-moe-input-scaling": (moe_variant("qwen3-30b-a3b", dict(router_scales_input=True)),
                                "moe.router_scales_input: True"),
    "qwen3-moe-window-on-some-layers": (tiny("qwen3-30b-a3b", attn_pattern=("sliding", "global"), sliding_window=4),
                                        "Qwen3-MoE's window is on every layer or on none"),
}


@pytest.mark.parametrize("key", sorted(REFUSED_TO_HF))
def test_a_config_the_type_cannot_express_is_refused_naming_the_field(key):
    config, named = REFUSED_TO_HF[key]
    with pytest.raises(ConversionError) as info:
        hf_config(config)
    assert named in str(info.value)


REFUSED_FROM_HF = [
    ("olmoe-1b-7b", "clip_qkv", 1.0, "clip_qkv=1.0 is not supported: transformers' OlmoeAttention clamps"),
    ("dbrx", "ffn_config.moe_normalize_expert_weights", 2.0, "ffn_config.moe_normalize_expert_weights=2.0"),
    ("dbrx", "tie_word_embeddings", True, "tie_word_embeddings=True is not supported: DbrxConfig refuses"),
    ("dbrx", "router_aux_loss_coef", 0.1, "router_aux_loss_coef=0.1 is not supported: disagrees with ffn_config"),
    ("dbrx", "rope_parameters", {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5},
     "DBRX takes a theta only"),
    ("dbrx", "ffn_config.ffn_act_fn", {"name": "silu", "alpha": 1.0}, "unknown field(s) ffn_config.ffn_act_fn.alpha"),
    ("dbrx", "ffn_config.uniform_expert_assignment", True, "uniform_expert_assignment=True"),
    # Qwen3MoeConfig saves num_experts as num_local_experts; a file may say either, not both differently
    ("qwen3-30b-a3b", "num_local_experts", 64, "num_experts=128 is not supported: the same field as num_local_experts"),
    ("qwen3-30b-a3b", "layer_types", ["full_attention"] * 2, "unknown field(s) layer_types"),
    ("qwen1.5-moe-a2.7b", "mlp_only_layers", [0, 1], "no layer is a mixture of experts"),
    ("qwen1.5-moe-a2.7b", "shared_expert_intermediate_size", 0, "always adds its gated shared expert"),
    ("qwen1.5-moe-a2.7b", "layer_types", ["sliding_attention"] * 2, "names sliding_attention layers but"),
    ("olmoe-1b-7b", "lmref_moe_aux_loss", "sum", "lmref_moe_aux_loss='sum' is not supported: lmref's load-balancing"),
    ("dbrx", "lmref_moe_router_z_loss_coef", "0.1", "lmref_moe_router_z_loss_coef='0.1' is not supported: expected"),
]


@pytest.mark.parametrize("arch, field, value, named", REFUSED_FROM_HF,
                         ids=[f"{a}-{f}" for a, f, _, _ in REFUSED_FROM_HF])
def test_a_config_json_lmref_cannot_read_is_refused_naming_the_field(arch, field, value, named):
    config = case_config(arch)
    data = json.loads(json.dumps(hf_config(config)))
    *parents, leaf = field.split(".")
    target = data
    for key in parents:
        target = target[key]
    target[leaf] = value
    with pytest.raises(ConversionError) as info:
        config_from_hf(data, "x")
    assert named in str(info.value)
