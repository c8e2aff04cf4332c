"""What the mixture-of-experts model types share (mixtral, dbrx, qwen2_moe, qwen3_moe, olmoe).

Each of them routes like lmref's "softmax_topk" (transformers 5.23 `MixtralTopKRouter`,
`Qwen2MoeTopKRouter`, `Qwen3MoeTopKRouter`, `OlmoeTopKRouter`, `DbrxFFN.route_tokens_to_experts`:
softmax over every expert, top-k, renormalised or not) and adds
`router_aux_loss_coef` (DBRX: `ffn_config.moe_loss_weight`) times `load_balancing_loss_func`
to a `labels=` loss when asked for the router logits, the golden's loss (impl_numpy/moe.py).

Llama 4 (convert/models/llama4_text.py) routes otherwise (sigmoid top-k scaling the experts'
input, no auxiliary loss) and shares only `moe_rules`, `own_width` and the ignored keys.

A `ModelConfig`'s `moe` fields a type does not map must keep the value its class hard-codes
(`moe_rules`).  Qwen's types choose their mixture layers by index (`mlp_only_layers`,
`decoder_sparse_step`: `sparse_pattern`); the others make every layer one.
Checkpoints hold the experts one `nn.Linear` each (`expert_entries`), except DBRX's.
"""

from __future__ import annotations

import dataclasses
from typing import get_args

from lmref.convert.fields import HFConfig
from lmref.convert.layer_types import shortest_period
from lmref.convert.layout import Entry, expert_linear, linear
from lmref.spec.config import AuxLossKind, MlpLayerKind, ModelConfig, MoEConfig

# What every one of these types computes (spec/features.py).
MOE_FEATURES = ("moe.softmax_topk", "moe.aux_loss")
# The ModelConfig fields a mixture-of-experts type maps besides its dense ones.
MOE_MAPPED = {"mlp_pattern", "moe"}
# Keys that never change a forward pass: whether forward returns the router logits (and
# so adds the auxiliary loss to a `labels=` loss; lmref's adapter always asks), and the
# router's jitter, applied only in training (`if self.training and ...`).
MOE_IGNORED = frozenset({"output_router_logits", "router_jitter_noise"})
# Where the llama-style mixtures (mixtral, qwen2_moe, qwen3_moe, olmoe) keep a layer's parts
# in memory (5.23 names, for `--impl hf` capture and routing): `mlp` is the whole mixture (a
# dense layer's MLP in Qwen's types), `router` returns (logits [T, E], weights, indices) and
# `experts` is called as experts(x, top_k_index, top_k_weights).
MOE_LAYER_MODULES = {"attn": "model.layers.{i}.self_attn.o_proj", "mlp": "model.layers.{i}.mlp",
                     "router": "model.layers.{i}.mlp.gate", "experts": "model.layers.{i}.mlp.experts",
                     "out": "model.layers.{i}"}
# The training objective's fields.  transformers' `labels=` loss pools the load-balancing loss
# and has no router z-loss; lmref writes any other objective (DBRX's and OLMoE's authors' own,
# spec/MATH.md "MoE") under its own keys, which transformers keeps and never reads, and reads them
# back, so a round trip loses nothing.  A file without them (the Hub's) holds transformers' loss.
OBJECTIVE_FIELDS = frozenset({"aux_loss_coef", "aux_loss", "router_z_loss_coef"})
OBJECTIVE_KEYS = {"aux_loss": "lmref_moe_aux_loss", "router_z_loss_coef": "lmref_moe_router_z_loss_coef"}
_MOE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(MoEConfig) if f.default is not dataclasses.MISSING}


def moe_rules(c: ModelConfig, model_type: str, mapped: set[str],
              fixed: dict[str, object] | None = None) -> list[tuple[str, bool, str]]:
    """convert/fields.py rules: `c` has a `moe`, and each of its fields not in `mapped` has
    the value transformers' `model_type` hard-codes (`fixed`, else MoEConfig's default)."""
    if c.moe is None:
        return [("moe", False, f"transformers' {model_type} is a mixture of experts; this config has none")]
    wants = {name: (fixed or {}).get(name, default) for name, default in _MOE_DEFAULTS.items() if name not in mapped}
    return [(f"moe.{name}", getattr(c.moe, name) == want,
             f"{getattr(c.moe, name)!r} (transformers' {model_type} has {want!r})") for name, want in wants.items()]


def objective_from_hf(cfg: HFConfig, coef: float) -> dict:
    """MoEConfig's objective fields: the load-balancing weight `coef` (the type's own key), and
    lmref's keys (OBJECTIVE_KEYS) where the file has them, else transformers' loss."""
    kind = cfg.require(OBJECTIVE_KEYS["aux_loss"], "pooled", get_args(AuxLossKind),
                       f"lmref's load-balancing loss kinds are {', '.join(get_args(AuxLossKind))}")
    z = cfg.get(OBJECTIVE_KEYS["router_z_loss_coef"], 0.0)
    if isinstance(z, bool) or not isinstance(z, (int, float)):
        cfg.fail(OBJECTIVE_KEYS["router_z_loss_coef"], z, "expected a number")
    return dict(aux_loss_coef=coef, aux_loss=kind, router_z_loss_coef=float(z))


def objective_to_hf(m: MoEConfig) -> dict:
    """lmref's keys for an objective transformers' loss is not (empty for transformers' own)."""
    kept = {"aux_loss": m.aux_loss != "pooled", "router_z_loss_coef": m.router_z_loss_coef != 0}
    return {OBJECTIVE_KEYS[field]: getattr(m, field) for field, differs in kept.items() if differs}


def transformers_objective(config: ModelConfig) -> ModelConfig:
    """`config` with the objective transformers' `labels=` loss computes (pooled, no z-loss):
    what a file without lmref's keys reads as (the Hub's DBRX and OLMoE files among them)."""
    return dataclasses.replace(config, moe=dataclasses.replace(config.moe, aux_loss="pooled", router_z_loss_coef=0.0))


def every_layer_rule(c: ModelConfig, model_type: str) -> tuple[str, bool, str]:
    return ("mlp_pattern", set(c.layer_mlp_kinds) == {"moe"},
            f"every layer of transformers' {model_type} is a mixture of experts, got mlp_pattern={c.mlp_pattern}")


def own_width(width: int, default: int) -> int | None:
    """A width as MoEConfig spells it: None where it is the width it would have anyway."""
    return None if width == default else width


def sparse_pattern(cfg: HFConfig, n_layers: int, n_experts: int) -> tuple[MlpLayerKind, ...]:
    """`mlp_pattern` of a qwen2_moe or qwen3_moe config.json (`Qwen2MoeDecoderLayer.__init__`,
    the same in Qwen3-MoE and in 4.57): layer i is a mixture iff i is not in `mlp_only_layers`
    and (i + 1) % `decoder_sparse_step` == 0; read back as its shortest period."""
    step = cfg.positive_integer("decoder_sparse_step", 1)
    dense = cfg.get("mlp_only_layers") or []  # __post_init__: None -> []
    if not (isinstance(dense, list) and all(isinstance(i, int) for i in dense)):
        cfg.fail("mlp_only_layers", dense, "expected a list of layer indices")
    kinds = tuple("moe" if n_experts > 0 and i not in dense and (i + 1) % step == 0 else "dense"
                  for i in range(n_layers))
    if "moe" not in kinds:
        cfg.fail("mlp_only_layers", dense, f"with decoder_sparse_step={step} and num_experts={n_experts} no layer "
                 "is a mixture of experts: a dense model, which lmref does not read as this type")
    return shortest_period(kinds)


def sparse_hf_fields(c: ModelConfig) -> dict:
    """`sparse_pattern`'s inverse: the `decoder_sparse_step` whose rule alone gives the layers
    (Qwen's own spelling), else step 1 with every dense layer in `mlp_only_layers`."""
    kinds = c.layer_mlp_kinds
    for step in range(1, c.n_layers + 1):
        if kinds == tuple("moe" if (i + 1) % step == 0 else "dense" for i in range(c.n_layers)):
            return {"decoder_sparse_step": step, "mlp_only_layers": []}
    return {"decoder_sparse_step": 1, "mlp_only_layers": [i for i, kind in enumerate(kinds) if kind == "dense"]}


def expert_entries(c: ModelConfig, i: int, router: str, experts: str, names: tuple[str, str, str]) -> list[Entry]:
    """Layer i's router (`router`.weight, an nn.Linear [E, d]) and each expert's gate, up and
    down projections (`experts`.{e}.{name}.weight, nn.Linear [f, d], [f, d], [d, f]), the
    transposes of the canonical `layers.{i}.mlp.router` [d, E] and `experts.w_gate[e]` [d, f] ..."""
    p = f"layers.{i}.mlp"
    table = [linear(f"{router}.weight", f"{p}.router")]
    for e in range(c.moe.n_experts):
        table += [expert_linear(f"{experts}.{e}.{name}.weight", f"{p}.experts.{w}", e)
                  for name, w in zip(names, ("w_gate", "w_up", "w_down"), strict=True)]
    return table
