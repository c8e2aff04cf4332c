"""The ONNX export follows the torch twin feature by feature, or refuses the feature by name.

Each feature the torch twin declares (impl_torch/features.py) is switched on in one of a
handful of configs (compatible features share a config: each export costs seconds).  A
config whose features the export declares (export/features.py) is exported and run in
onnxruntime on the CPU: a left-padded prefill from an empty past and decode steps through
the graph's own cache, against the float32 torch twin and the float64 golden on each row
unpadded, with the float32 row of conformance/tolerances.py (export/validate.py).  A config
needing a feature the export leaves out must be refused with that feature's name.  The
drift check makes a new torch feature without a config here fail this file.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from lmref.export import features as export_features  # noqa: E402
from lmref.export.bundle import open_bundle  # noqa: E402
from lmref.export.decoder import OnnxDecoder  # noqa: E402
from lmref.export.exporter import export_onnx  # noqa: E402
from lmref.export.runtime import CPU  # noqa: E402
from lmref.export.validate import validate  # noqa: E402
from lmref.impl_torch import FEATURES as TORCH_FEATURES  # noqa: E402
from lmref.impl_torch import Transformer  # noqa: E402
from lmref.spec import init_params, tiny  # noqa: E402
from lmref.spec.config import ModelConfig, MoEConfig, RopeScaling, VisionConfig  # noqa: E402
from lmref.spec.features import UnsupportedFeature, required_features  # noqa: E402

SIZES = dict(vocab_size=61, d_model=24, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=40, max_seq_len=64,
             norm_eps=1e-5)
# Windows and chunks shorter than the validated rows (prompts of 9 or 11 tokens, 4 steps),
# so that every mask rule cuts keys off, also across the left padding.
CONFIGS = [
    ModelConfig(name="rope-interleaved-partial-linear", **SIZES, position="rope", rope_layout="interleaved",
                rope_fraction=0.5, rope_scaling=RopeScaling(kind="linear", factor=2.0),
                attn_pattern=("sliding", "chunked", "global_nope"), sliding_window=3, attn_chunk_size=4,
                norm="rmsnorm", mlp="gated", activation="silu", qkv_bias=True, attn_out_bias=True,
                lm_head_bias=True),
    ModelConfig(name="rope-llama3-scaling", **SIZES, position="rope", rope_theta=500_000.0,
                rope_scaling=RopeScaling(kind="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                         original_max_seq_len=8),
                attn_pattern=("global", "sliding"), sliding_window=5, qkv_clip=0.5, norm="layernorm",
                norm_bias=True, mlp="plain", activation="relu", mlp_bias=True, tie_embeddings=True),
    # LongRoPE over O 8: the padded row (6 tokens) crosses O in its third decode step, the other
    # (9) starts past it, so one graph call rotates the two rows with different factors
    ModelConfig(name="longrope-partial-rows-in-two-regimes", **SIZES, position="rope", rope_fraction=0.5,
                rope_scaling=RopeScaling(kind="longrope", factor=16.0, original_max_seq_len=8,
                                         short_factor=(1.0, 2.0), long_factor=(3.0, 40.0)),
                norm="rmsnorm", mlp="gated", activation="silu"),
    ModelConfig(name="learned-weightless-norm", **SIZES, position="learned", attn_pattern=("chunked", "sliding"),
                attn_chunk_size=3, sliding_window=2, norm="layernorm", norm_weight=False, mlp="plain",
                activation="gelu"),
    ModelConfig(name="alibi-6-heads", **(SIZES | dict(n_heads=6, n_kv_heads=3)), position="alibi",
                alibi_slopes="geometric", attn_pattern=("sliding", "global"), sliding_window=4, norm="rmsnorm", mlp="gated",
                activation="gelu_tanh"),
    # BLOOM (issue 13): the LayerNorm after the token embedding, the tanh GELU with sqrt(2/pi)
    # truncated, ALiBi, biases everywhere, a tied head
    ModelConfig(name="alibi-embedding-norm-truncated-gelu", **(SIZES | dict(n_kv_heads=4)), position="alibi",
                embedding_norm=True, norm="layernorm", norm_bias=True, qkv_bias=True, attn_out_bias=True,
                mlp="plain", activation="gelu_tanh_truncated", mlp_bias=True, tie_embeddings=True),
    ModelConfig(name="no-positions", **SIZES, position="none", attn_pattern=("chunked", "global"),
                attn_chunk_size=5, norm="rmsnorm", mlp="gated", activation="gelu"),
    # Gemma 2, Gemma 3 and OLMo 2's knobs (issue 11)
    ModelConfig(name="sandwich-softcaps", **SIZES, position="rope", attn_pattern=("sliding", "global"),
                sliding_window=3, norm="rmsnorm", norm_unit_offset=True, norm_placement="sandwich",
                embedding_scale="sqrt_d_model", attn_softcap=2.0, final_logit_softcap=3.0, query_scale_dim=5,
                mlp="gated", activation="gelu_tanh", tie_embeddings=True),
    ModelConfig(name="qk-per-head-local-theta", **SIZES, position="rope", rope_theta=1e6, rope_theta_local=100.0,
                rope_scaling=RopeScaling(kind="linear", factor=4.0), attn_pattern=("sliding", "sliding", "global"),
                sliding_window=4, qk_norm="per_head", norm="rmsnorm", norm_unit_offset=True,
                norm_placement="sandwich", mlp="gated", activation="gelu_tanh"),
    ModelConfig(name="post-sublayer-qk-per-projection-quick-gelu", **SIZES, position="rope", rope_theta=500_000.0,
                norm="rmsnorm", norm_placement="post_sublayer", qk_norm="per_projection", mlp="gated",
                activation="quick_gelu"),
    # Parallel blocks (issue 13): GPT-NeoX's two norms with a quarter of the head rotating in halves
    # (a pass-through of odd width), GPT-J's one shared norm with interleaved pairs.
    ModelConfig(name="parallel-two-norms-partial-halves", **(SIZES | dict(head_dim=7)), position="rope",
                rope_fraction=0.5, norm="layernorm", norm_bias=True, mlp="plain", activation="gelu", mlp_bias=True,
                parallel_residual=True),
    ModelConfig(name="parallel-shared-norm-partial-interleaved", **SIZES, position="rope", rope_layout="interleaved",
                rope_fraction=0.25, norm="layernorm", mlp="plain", activation="gelu_tanh", lm_head_bias=True,
                parallel_residual=True, shared_attn_norm=True),
    # PaLM (issue 13): multi-query, SwiGLU, a tied head whose logits are scaled by d_model^-0.5; the
    # logit z-loss only adds to the loss, computed from the graph's logits (export/onnx_adapter.py).
    ModelConfig(name="palm-parallel-mqa-logit-scale", **(SIZES | dict(n_kv_heads=1)), position="rope",
                norm="layernorm", mlp="gated", activation="silu", tie_embeddings=True, parallel_residual=True,
                shared_attn_norm=True, logit_scale=24**-0.5, logit_z_loss_coef=1e-4),
    # Mixtures of experts (issue 12): Qwen2-MoE's softmax top-k without renormalisation and a
    # gated shared expert; Llama 4's sigmoid top-1 scaling the expert input, a shared expert,
    # every other layer dense, with its attention (the weightless L2 QK norm, the NoPE layers'
    # query temperature, active from position 2 on with floor 3).  The auxiliary losses (pooled,
    # per layer, the z-loss) only add to the loss: the graph exposes the router logits they are
    # computed from (export/onnx_adapter.py; its
    # test in tests/test_export_moe.py).
    ModelConfig(name="moe-softmax-shared-gate", **SIZES, position="rope", norm="rmsnorm", mlp="gated",
                activation="silu", mlp_pattern=("moe", "dense"),
                moe=MoEConfig(n_experts=6, n_experts_per_token=2, d_ff=16, renormalize=False, n_shared_experts=1,
                              shared_d_ff=20, shared_expert_gate=True, aux_loss_coef=0.01)),
    ModelConfig(name="llama4-moe-sigmoid-scales-input", **SIZES, position="rope",
                attn_pattern=("chunked", "global_nope"), attn_chunk_size=4, qk_norm="l2", attn_temperature_floor=3,
                attn_temperature_scale=0.5, norm="rmsnorm", mlp="gated", activation="silu", mlp_pattern=("dense", "moe"),
                moe=MoEConfig(n_experts=5, n_experts_per_token=1, router="sigmoid_topk", router_scales_input=True,
                              renormalize=False, n_shared_experts=1, aux_loss_coef=0.01, aux_loss="per_layer",
                              router_z_loss_coef=0.001)),
    # LLaVA (issue 14): the image pathway in three graphs (export/vision_graphs.py), validated on
    # rows holding images; with what a config may do after the lookup (BLOOM's norm, Gemma's
    # scale, learned positions), which the decoder applies to the merged image rows too
    ModelConfig(name="llava-vision-tower-after-the-lookup", **SIZES, position="learned", embedding_norm=True,
                embedding_scale="sqrt_d_model", norm="rmsnorm", mlp="gated", activation="silu",
                vision=VisionConfig(image_size=6, patch_size=2, d_model=8, n_layers=2, n_heads=2, d_ff=16,
                                    image_token_id=60)),
]


def test_the_configs_cover_every_torch_feature():
    """Drift: a feature the torch twin gains needs a config here (and an export check)."""
    covered = frozenset().union(*(required_features(c) for c in CONFIGS))
    assert sorted(TORCH_FEATURES - covered) == []


def test_the_export_declares_torch_features_only():
    assert export_features.FEATURES <= TORCH_FEATURES


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_the_export_follows_the_torch_twin_or_refuses_by_name(config, tmp_path):
    params = init_params(config, 3)
    missing = sorted(required_features(config) - export_features.FEATURES)
    if missing:
        with pytest.raises(UnsupportedFeature) as refused:
            export_onnx(config, params, tmp_path)
        assert list(refused.value.missing) == missing and all(name in str(refused.value) for name in missing)
        return
    export_onnx(config, params, tmp_path)
    lines: list[str] = []
    checks = validate(open_bundle(tmp_path), params, [CPU], pad=3, steps=4, log=lines.append)
    routing = [("golden", "routing")] if config.moe is not None else []  # the graph's experts, export/routing.py
    vision = [("golden", f"{name} (vision.onnx alone)") for name in ("image_features", "vision_features")
              if config.vision is not None]  # export/validate_vision.py
    assert [(c.reference.split()[0], c.phase) for c in checks] == [
        ("golden", "prefill"), ("golden", "decode (4 steps)"), ("torch", "prefill"), ("torch", "decode (4 steps)"),
        *routing, *vision]
    assert [c.failed for c in checks] == [[]] * len(checks), "\n".join(lines)


def test_a_feature_the_export_leaves_out_is_refused_by_name(monkeypatch, tmp_path):
    """A torch feature missing from the ONNX set: the export refuses it by name before it
    traces anything, as an UnsupportedFeature (NOT SUPPORTED in the suite, a refused model
    for `lmref export`)."""
    config = CONFIGS[0]
    monkeypatch.setattr(export_features, "FEATURES", export_features.FEATURES - {"attn.chunked"})
    params = init_params(config, 0)
    for export in (lambda: export_onnx(config, params, tmp_path / "out"),
                   lambda: OnnxDecoder.from_canonical(config, params),
                   lambda: OnnxDecoder(Transformer.from_canonical(config, params))):
        with pytest.raises(UnsupportedFeature, match=r"the onnx backend does not implement .*attn\.chunked") as e:
            export()
        assert e.value.missing == ("attn.chunked",)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("changes, feature", [
    (dict(rope_scaling=RopeScaling(kind="yarn", factor=2.0, original_max_seq_len=16)), "rope.scaling.yarn"),
    (dict(rope_scaling=RopeScaling(kind="dynamic", factor=2.0)), "rope.scaling.dynamic"),
], ids=["yarn", "dynamic_rope"])
def test_a_feature_torch_lacks_is_refused_by_the_twin_and_the_export(changes, feature, tmp_path):
    config = tiny("llama3", **changes)
    params = init_params(config, 0)
    message = rf"the (torch|onnx) backend does not implement feature\(s\) of config 'llama3-tiny': {feature} "
    for build in (lambda: Transformer(config), lambda: Transformer.from_canonical(config, params),
                  lambda: export_onnx(config, params, tmp_path / "out"),
                  lambda: OnnxDecoder.from_canonical(config, params)):
        with pytest.raises(UnsupportedFeature, match=message) as e:
            build()
        assert e.value.missing == (feature,)
    assert not (tmp_path / "out").exists()
