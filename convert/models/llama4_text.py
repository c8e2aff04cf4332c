"""Llama 4 text models (`Llama4ForCausalLM`, transformers models/llama4, 5.23) <-> lmref.

LLaMA's pre-norm block (RMSNorm, `rms_norm_eps`) with Llama 4's attention and mixture:

- RoPE on interleaved pairs (2i, 2i+1) of the stored q and k (`apply_rotary_emb`,
  `view_as_complex`): lmref's "interleaved" layout with the weights as they are (transformers'
  convert_llama4_weights_to_hf.py does not permute them).  A "halves" config is written with
  each head's q, k columns reordered for the interleaved rotation, the same function (read
  back as "interleaved").  Theta `default_theta` 5e5; no scaling or llama3's, as LLaMA's
  (5.23 would run linear too, but 4.57's Llama4TextRotaryEmbedding runs any `rope_scaling` as
  llama3, so another kind would mean two models).
- Layer i rotates iff `no_rope_layers[i]` (1: RoPE, 0: NoPE; by default every
  `no_rope_layer_interval`-th layer is NoPE) and masks by `layer_types[i]` ("chunked_attention":
  keys k <= q in q's chunk of `attention_chunk_size`; "full_attention": causal; by default
  chunked iff it rotates).  lmref's kinds: chunked (RoPE, chunked), global_nope (NoPE,
  full) and global (RoPE, full); a chunked NoPE layer has no lmref kind.
- `use_qk_norm`: a weightless RMSNorm of each q and k head after the RoPE, on RoPE layers only
  (`Llama4TextL2Norm`, eps `rms_norm_eps`): lmref's qk_norm "l2".
- `attn_temperature_tuning`: NoPE layers scale q by log1p(floor((p + 1) / `floor_scale`)) *
  `attn_scale` + 1 (lmref's attn_temperature_floor and _scale).  5.23 takes a bool and refuses
  the Hub's 4 (StrictDataclassFieldValidationError); 4.x runs any truthy value, and lmref reads
  an integer as that truth value.
- Layer i is a mixture iff it is in `moe_layers` (by default every `interleave_moe_layer_step`-th
  layer, from step - 1), else a SwiGLU of width `intermediate_size_mlp` (lmref's d_ff).  The
  mixture (`Llama4TextMoe`): the top `num_experts_per_tok` of `num_local_experts` raw router
  logits, their sigmoid scaling each chosen expert's input, not renormalised, and an ungated
  shared SwiGLU expert; experts and shared expert are `intermediate_size` wide.
  `router_aux_loss_coef` is never read (`Llama4ForCausalLM` adds no auxiliary loss), so
  lmref's aux_loss_coef is 0.

Checkpoint keys (save_pretrained writes them as the module holds them; no conversion mapping):
LLaMA's attention and norms, `model.layers.{i}.feed_forward.router.weight` [E, d],
`...feed_forward.experts.gate_up_proj` [E, d, 2f] (x @ W: the gate's columns, then the up's)
and `...experts.down_proj` [E, f, d], `...feed_forward.shared_expert.{gate,up,down}_proj.weight`
(nn.Linear); a dense layer's `...feed_forward.{gate,up,down}_proj.weight`.
"""

from __future__ import annotations

import numpy as np
from lmref.convert.fields import ACTIVATION_FEATURES, HFConfig, activation_rule, check_expressible
from lmref.convert.layer_types import shortest_period
from lmref.convert.layout import Entry, linear, same
from lmref.convert.models import llama
from lmref.convert.moe import MOE_IGNORED, MOE_MAPPED, moe_rules, own_width
from lmref.convert.rope import ROPE_FEATURES, rope_columns_permutation
from lmref.spec.config import AttnKind, ModelConfig, MoEConfig
from lmref.spec.features import declare

MODEL_TYPE = "llama4_text"
ARCHITECTURE = "Llama4ForCausalLM"
PREFIX = "model."  # Llama4ForCausalLM.model (its base_model_prefix says "language_model", the multimodal one's)

# Llama4ForCausalLM: iRoPE (chunked RoPE layers, NoPE layers with a query temperature), the
# L2 QK norm, sigmoid top-k routing that scales the experts' input, a shared expert; no RoPE
# scaling but llama3's (`LINEAR_WHY`).
FEATURES = declare(
    *(f for f in ROPE_FEATURES if f != "rope.scaling.linear"), "norm.rmsnorm", "block.pre_norm",
    "attn.qk_norm.l2", "attn.temperature", "attn.chunked", "attn.nope_layers", "mlp.gated", *ACTIVATION_FEATURES,
    "head.tied", "moe.sigmoid_topk", "moe.scales_input", "moe.shared_expert", "moe.no_renormalize",
)
IGNORED_SUFFIXES = llama.IGNORED_SUFFIXES
# Where a layer's parts are (for `--impl hf`): `mlp` is the dense MLP or the whole mixture
# (Llama4TextMoe returns (out [T, d], router logits)); `router` returns (scores [T, E]: sigmoid
# of the chosen logits, 0 elsewhere, logits [T, E]).  The experts module takes every token,
# scaled by its score, so the choice is read from the router (`chosen_experts`).
LAYER_MODULES = {"attn": "model.layers.{i}.self_attn.o_proj", "mlp": "model.layers.{i}.feed_forward",
                 "router": "model.layers.{i}.feed_forward.router", "out": "model.layers.{i}"}
ROUTER_LOGITS = 1  # the index of the logits in the router's output
IGNORED = MOE_IGNORED | {
    "attention_dropout",  # off in eval
    "router_aux_loss_coef",  # never read: Llama4ForCausalLM's loss has no auxiliary term
    "cache_implementation",  # how generate() caches, not what a forward computes
}

# Llama4TextConfig's class defaults (configuration_llama4.py, 5.23).
DEFAULTS = llama.DEFAULTS | dict(vocab_size=202048, hidden_size=5120, intermediate_size=8192, num_hidden_layers=48,
                                 num_attention_heads=40, num_key_value_heads=8, max_position_embeddings=4096 * 32,
                                 rope_theta=500_000.0)
D_FF_MLP, HEAD_DIM, CHUNK, FLOOR, SCALE, NOPE_INTERVAL = 16384, 128, 8192, 8192, 0.1, 4
# 4.57's Llama4TextRotaryEmbedding runs any rope_scaling as llama3 (5.23 follows rope_type)
LINEAR_WHY = "transformers 4.x runs every Llama 4 rope_scaling as llama3, so only llama3 means one model"
HF_KIND = {"chunked": (1, "chunked_attention"), "global_nope": (0, "full_attention"), "global": (1, "full_attention")}
LMREF_KIND = {hf: kind for kind, hf in HF_KIND.items()}


def chosen_experts(router_output, k: int):
    """The experts Llama4TextMoe sends each token to [T, k]: those whose router score (the
    sigmoid of a top-k logit, 0 for the others) scales a nonzero input, largest first."""
    return router_output[0].topk(k, dim=1).indices


def _per_layer(cfg: HFConfig, key: str, value: object, n_layers: int, allowed: tuple) -> list:
    if not (isinstance(value, list) and len(value) >= n_layers and all(v in allowed for v in value)):
        cfg.fail(key, value, f"expected a list of at least num_hidden_layers ({n_layers}) entries, each one of "
                 f"{', '.join(map(repr, allowed))}")
    return value[:n_layers]


def attention_fields(cfg: HFConfig, n_layers: int) -> dict:
    """attn_pattern, attn_chunk_size and the temperature, by `Llama4TextConfig.__post_init__`'s rules."""
    interval = cfg.get("no_rope_layer_interval", NOPE_INTERVAL)
    rope = cfg.get("no_rope_layers")
    if not rope:  # None or []: every interval-th layer is NoPE
        interval = cfg.checked_positive("no_rope_layer_interval", interval)
        rope = [int((i + 1) % interval != 0) for i in range(n_layers)]
    rope = [int(r) for r in _per_layer(cfg, "no_rope_layers", rope, n_layers, (0, 1))]
    types = cfg.get("layer_types")
    if types is None:
        types = ["chunked_attention" if r else "full_attention" for r in rope]
    types = _per_layer(cfg, "layer_types", types, n_layers, ("chunked_attention", "full_attention"))
    if (0, "chunked_attention") in zip(rope, types):
        cfg.fail("layer_types", types, f"with no_rope_layers={rope} a NoPE layer is chunked, which lmref has "
                 "no layer kind for (chunked layers rotate, global_nope layers attend to every earlier key)")
    kinds: tuple[AttnKind, ...] = shortest_period(tuple(LMREF_KIND[pair] for pair in zip(rope, types)))
    chunk = cfg.get("attention_chunk_size", CHUNK)
    if "chunked" in kinds and (isinstance(chunk, bool) or not (isinstance(chunk, int) and chunk > 0)):
        cfg.fail("attention_chunk_size", chunk, "chunked layers need a positive chunk size")
    tuning = cfg.get("attn_temperature_tuning", True)
    if not isinstance(tuning, bool | int):
        cfg.fail("attn_temperature_tuning", tuning, "expected a bool (or an integer, read as its truth value)")
    floor, scale = cfg.get("floor_scale", FLOOR), cfg.get("attn_scale", SCALE)
    if tuning:  # transformers divides the position by it
        floor = cfg.checked_positive("floor_scale", floor)
    if not isinstance(scale, int | float):
        cfg.fail("attn_scale", scale, "expected a number")
    return dict(attn_pattern=kinds, attn_chunk_size=chunk if "chunked" in kinds else None,
                attn_temperature_floor=floor if tuning else None,
                attn_temperature_scale=(float(scale) or None) if tuning else None)  # 0: a temperature of 1


def mlp_pattern(cfg: HFConfig, n_layers: int) -> tuple:
    """`mlp_pattern` from `moe_layers`, or `interleave_moe_layer_step` without it."""
    step, layers = cfg.get("interleave_moe_layer_step", 1), cfg.get("moe_layers")
    if layers is None:
        step = cfg.checked_positive("interleave_moe_layer_step", step)
        layers = list(range(step - 1, n_layers, step))
    if not (isinstance(layers, list) and all(isinstance(i, int) for i in layers)):
        cfg.fail("moe_layers", layers, "expected a list of layer indices")
    kinds = tuple("moe" if i in layers else "dense" for i in range(n_layers))
    if "moe" not in kinds:
        cfg.fail("moe_layers", layers, "no layer is a mixture of experts: a dense model, which lmref does not "
                 "read as this type")
    return shortest_period(kinds)


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """Llama4TextConfig fields (defaults: the Llama4TextConfig class defaults) -> ModelConfig."""
    fields = llama.llama_style_fields(cfg, name, MODEL_TYPE, DEFAULTS)
    if fields["rope_scaling"] is not None and fields["rope_scaling"].kind != "llama3":
        cfg.fail("rope_parameters", cfg.get("rope_parameters") or cfg.get("rope_scaling"), LINEAR_WHY)
    width = fields["d_ff"]  # intermediate_size: the experts' and the shared expert's
    fields["d_ff"] = cfg.positive_integer("intermediate_size_mlp", D_FF_MLP)
    cfg.require("attention_bias", False, (False,), "transformers 4.x hard-codes no attention bias "
                "(Llama4TextConfig.__init__), so the file would mean two models; lmref maps none")
    cfg.require("for_llm_compressor", False, (False,), "an option of 4.51 (false on the Hub) that neither 4.57 "
                "nor 5.23 reads, so lmref does not know what a checkpoint saved with it holds")
    moe = MoEConfig(n_experts=cfg.positive_integer("num_local_experts", 16),
                    n_experts_per_token=cfg.positive_integer("num_experts_per_tok", 1),
                    router="sigmoid_topk", d_ff=own_width(width, fields["d_ff"]), router_scales_input=True,
                    renormalize=False, n_shared_experts=1)
    qk_norm = cfg.require("use_qk_norm", True, (True, False), "expected a bool")
    return ModelConfig(
        **fields, head_dim=llama.head_dim(cfg, fields, HEAD_DIM),
        rope_layout="interleaved", **attention_fields(cfg, fields["n_layers"]), qk_norm="l2" if qk_norm else "none",
        norm="rmsnorm", norm_eps=cfg.number("rms_norm_eps", 1e-5),
        mlp="gated", activation=cfg.activation("hidden_act", "silu"),
        mlp_pattern=mlp_pattern(cfg, fields["n_layers"]), moe=moe,
    )


def _first_rule(kinds: tuple, rule) -> int | None:
    """The smallest n whose rule(i, n) gives `kinds` (Meta's spelling of a regular pattern)."""
    return next((n for n in range(1, len(kinds) + 2) if kinds == tuple(rule(i, n) for i in range(len(kinds)))), None)


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> Llama4TextConfig fields; ConversionError if Llama 4 cannot express it."""
    mapped = {"n_experts", "n_experts_per_token", "d_ff", "n_shared_experts", "shared_d_ff"}
    check_expressible(
        c, MODEL_TYPE,
        mapped=llama.LLAMA_STYLE_MAPPED | MOE_MAPPED | {"head_dim", "norm_eps", "qk_norm", "attn_pattern",
                                                        "attn_chunk_size", "attn_temperature_floor",
                                                        "attn_temperature_scale"},
        fixed={"position": "rope", "norm": "rmsnorm", "mlp": "gated"},
        rules=[activation_rule(c), ("rope_scaling", c.rope_scaling is None or c.rope_scaling.kind == "llama3",
                                    f"kind {c.rope_scaling and c.rope_scaling.kind!r}: {LINEAR_WHY}"),
               ("attn_pattern", set(c.attn_pattern) <= set(HF_KIND),
                f"Llama 4's layers are {', '.join(HF_KIND)} (RoPE and chunked, NoPE and causal, RoPE and causal), "
                f"got attn_pattern={c.attn_pattern}"),
               ("qk_norm", c.qk_norm in ("none", "l2"), f"Llama 4's use_qk_norm is the weightless 'l2', "
                f"got {c.qk_norm!r}"),
               ("moe.shared_d_ff", c.moe is None or c.shared_expert_d_ff == c.expert_d_ff,
                f"Llama 4 always adds one shared expert as wide as an expert ({c.expert_d_ff}), "
                f"got width {c.shared_expert_d_ff}"),
               *moe_rules(c, MODEL_TYPE, mapped, {"router": "sigmoid_topk", "router_scales_input": True,
                                                  "renormalize": False})],
    )
    kinds, mlp_kinds = c.layer_attn_kinds, c.layer_mlp_kinds
    interval = _first_rule(kinds, lambda i, n: "global_nope" if (i + 1) % n == 0 else "chunked")
    step = _first_rule(mlp_kinds, lambda i, n: "moe" if (i + 1) % n == 0 else "dense")
    tuning = c.attn_temperature_floor is not None
    return llama.llama_style_hf_fields(c) | {
        "intermediate_size": c.expert_d_ff, "intermediate_size_mlp": c.d_ff, "head_dim": c.head_dim,
        "rms_norm_eps": c.norm_eps, "use_qk_norm": c.qk_norm == "l2", "attention_bias": False,
        "no_rope_layers": [HF_KIND[k][0] for k in kinds], "layer_types": [HF_KIND[k][1] for k in kinds],
        "attention_chunk_size": c.attn_chunk_size or CHUNK,  # 5.23 builds the chunked mask on every forward
        "attn_temperature_tuning": tuning, "floor_scale": c.attn_temperature_floor if tuning else FLOOR,
        "attn_scale": (c.attn_temperature_scale or 0.0) if tuning else SCALE,
        "num_local_experts": c.moe.n_experts, "num_experts_per_tok": c.moe.n_experts_per_token,
        "moe_layers": [i for i, kind in enumerate(mlp_kinds) if kind == "moe"],
    } | ({} if interval is None else {"no_rope_layer_interval": interval}) | (
        {} if step is None else {"interleave_moe_layer_step": step})


def _columns(c: ModelConfig, heads: int) -> tuple[int, ...] | None:
    """q's or k's column order for transformers' interleaved rotation: as stored for an
    interleaved config; for a halves one, the inverse of `rope_columns_permutation`."""
    if c.rope_layout == "interleaved":
        return None
    return tuple(int(j) for j in np.argsort(rope_columns_permutation(heads, c.head_dim, "interleaved")))


def entries(c: ModelConfig) -> list[Entry]:
    """LLaMA's attention and norms; a mixture layer's router, fused experts and shared expert,
    or a dense layer's MLP, under `feed_forward`."""
    table = [same("model.embed_tokens.weight", "embed.tokens")]
    q_perm, k_perm = _columns(c, c.n_heads), _columns(c, c.n_kv_heads)
    for i, kind in enumerate(c.layer_mlp_kinds):
        h, p = f"model.layers.{i}", f"layers.{i}"
        a, f = f"{h}.self_attn", f"{h}.feed_forward"
        table += [same(f"{h}.input_layernorm.weight", f"{p}.attn_norm.weight"),
                  same(f"{h}.post_attention_layernorm.weight", f"{p}.mlp_norm.weight"),
                  linear(f"{a}.q_proj.weight", f"{p}.attn.wq", perm=q_perm),
                  linear(f"{a}.k_proj.weight", f"{p}.attn.wk", perm=k_perm),
                  linear(f"{a}.v_proj.weight", f"{p}.attn.wv"), linear(f"{a}.o_proj.weight", f"{p}.attn.wo")]
        mlp = f"{p}.mlp" if kind == "dense" else f"{p}.mlp.shared"
        if kind == "moe":
            table += [linear(f"{f}.router.weight", f"{p}.mlp.router"),  # [d, E] -> [E, d]
                      # [E, d, f] | [E, d, f] -> [E, d, 2f], oriented x @ W like lmref's
                      Entry(f"{f}.experts.gate_up_proj", (f"{p}.mlp.experts.w_gate", f"{p}.mlp.experts.w_up")),
                      same(f"{f}.experts.down_proj", f"{p}.mlp.experts.w_down")]
            f = f"{f}.shared_expert"
        table += [linear(f"{f}.{name}.weight", f"{mlp}.{w}")
                  for name, w in (("gate_proj", "w_gate"), ("up_proj", "w_up"), ("down_proj", "w_down"))]
    return table + [same("model.norm.weight", "final_norm.weight")] + llama.head_entries(c)
