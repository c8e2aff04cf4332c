"""Every knob is alive in the golden store: for every knob a preset sets, switching it off
changes at least one of that preset's stored golden outputs by more than the float32
tolerance row.  A knob that no case can see (a window longer than every case, a RoPE scaling
whose original context is never passed, a head count where two conventions agree) would let
an implementation that ignores it pass; `tiny()` and the case generator keep each knob
effective, and this test proves it.

"Off" is the field's default; for the fields every config sets (position, norm, MLP kind,
activation, norm eps) it is the neighbouring choice a port gets wrong; a layer pattern off is
every layer global, and MoE off is every layer dense.  The knobs inside the `moe` sub-config
are tested one by one (`moe.renormalize`, `moe.shared_expert_gate`, ...); its sizes are not
knobs, and the auxiliary losses' knobs (weights, kind) act on the loss only, as PaLM's logit
z-loss weight does: `test_the_loss_knobs_are_alive`.
"""

from __future__ import annotations

import dataclasses

import pytest

from lmref import impl_numpy
from lmref.conformance.runner import FAIL, run_check
from lmref.conformance.store import GoldenStore
from lmref.spec.config import ModelConfig, MoEConfig, VisionConfig
from lmref.spec.errors import InputError
from lmref.spec.features import LABEL_FIELDS, SIZE_FIELDS

STORE = GoldenStore()
DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.default is not dataclasses.MISSING}
MOE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(MoEConfig) if f.default is not dataclasses.MISSING}
# The moe sub-config's loss-only knobs (tested on the loss), and its sizes (not knobs).
MOE_LOSS_KNOBS = ("aux_loss_coef", "aux_loss", "router_z_loss_coef")
# The config's own loss-only knob (PaLM's logit z-loss weight), tested on the loss too.
LOSS_KNOBS = ("logit_z_loss_coef",)
MOE_NOT_FORWARD_KNOBS = ("n_experts", "n_experts_per_token", "d_ff", "shared_d_ff", *MOE_LOSS_KNOBS)
# BLOOM's truncated tanh GELU against the exact one (Megatron-DeepSpeed's ParallelMLP without
# --bias-gelu-fusion runs F.gelu): the exact tanh GELU is the same function to 1e-10, which no
# float32 check resolves (spec/MATH.md), so it is not the neighbouring mistake a case can see.
OTHER_ACTIVATION = {"gelu": "gelu_tanh", "gelu_tanh": "gelu", "gelu_tanh_truncated": "gelu", "silu": "gelu",
                    "relu": "silu", "quick_gelu": "gelu"}
# The vision sub-config's knobs, each tested whenever a config has a tower (LLaVA sets them all
# at their defaults, which are CLIP's and LLaVA-1.5's).  feature_strategy is not among them: the
# other strategy changes how many placeholders an image fills, so no stored case can run with it
# (`test_the_feature_strategy_sets_the_image_token_count`).
VISION_KNOBS = ("activation", "norm_eps", "feature_layer", "projector_activation", "projector_bias")


def _moe_knob_off(moe: MoEConfig, knob: str) -> MoEConfig:
    changes = {knob: MOE_DEFAULTS[knob]}
    if knob == "n_shared_experts":  # no shared expert: no width, no gate
        changes |= dict(shared_d_ff=None, shared_expert_gate=False)
    return dataclasses.replace(moe, **changes)


def _vision_knob_off(vision: VisionConfig, knob: str) -> VisionConfig:
    """The neighbouring mistake: the other activation, eps x 10, the last layer's states for the
    penultimate's, no projector biases."""
    value = getattr(vision, knob)
    off = {"activation": OTHER_ACTIVATION.get(value), "projector_activation": OTHER_ACTIVATION.get(value),
           "norm_eps": value * 10, "feature_layer": -1 if value == -2 else -2, "projector_bias": not value}[knob]
    return dataclasses.replace(vision, **{knob: off})


def switched_off(config: ModelConfig, field: str) -> ModelConfig:
    """`config` with the knob `field` off (and the knobs that only act with it)."""
    if field.startswith("moe."):
        return dataclasses.replace(config, moe=_moe_knob_off(config.moe, field.removeprefix("moe.")))
    if field.startswith("vision."):
        return dataclasses.replace(config, vision=_vision_knob_off(config.vision, field.removeprefix("vision.")))
    value = getattr(config, field)
    changes: dict = {field: DEFAULTS.get(field)}
    if field in ("mlp_pattern", "moe"):  # every layer dense
        changes = dict(mlp_pattern=DEFAULTS["mlp_pattern"], moe=None)
    elif field == "position":  # positions off: no table, no rotation, no bias
        changes = dict(position="none", rope_scaling=None, rope_theta_local=None, alibi_max_bias=DEFAULTS["alibi_max_bias"],
                       alibi_slopes=DEFAULTS["alibi_slopes"], rope_theta=DEFAULTS["rope_theta"])
    elif field == "norm":
        changes = dict(norm="rmsnorm" if value == "layernorm" else "layernorm", norm_bias=False)
    elif field == "norm_eps":
        changes = dict(norm_eps=value * 10)
    elif field == "mlp":
        changes = dict(mlp="plain" if value == "gated" else "gated")
    elif field == "activation":
        changes = dict(activation=OTHER_ACTIVATION[value])
    elif field == "norm_weight":
        changes = dict(norm_weight=True)
    elif field == "parallel_residual":  # sequential: a shared norm only exists in a parallel block
        changes = dict(parallel_residual=False, shared_attn_norm=False)
    elif field == "attn_temperature_floor":  # no temperature: its scale goes with it
        changes = dict(attn_temperature_floor=None, attn_temperature_scale=None)
    elif field in ("attn_pattern", "sliding_window", "attn_chunk_size"):  # every layer global
        changes = dict(attn_pattern=DEFAULTS["attn_pattern"], sliding_window=None, attn_chunk_size=None,
                       rope_theta_local=None)  # the local theta acts on sliding layers only
    return dataclasses.replace(config, **changes)


def knobs_set(config: ModelConfig) -> list[str]:
    """The fields of `config` that are knobs (not sizes or labels) and are not at their default."""
    knobs = [f.name for f in dataclasses.fields(ModelConfig)
             if f.name not in SIZE_FIELDS + LABEL_FIELDS + LOSS_KNOBS
             and (f.name not in DEFAULTS or getattr(config, f.name) != DEFAULTS[f.name])]
    if config.moe is not None:
        knobs += [f"moe.{name}" for name, default in MOE_DEFAULTS.items()
                  if name not in MOE_NOT_FORWARD_KNOBS and getattr(config.moe, name) != default]
    if config.vision is not None:
        knobs += [f"vision.{name}" for name in VISION_KNOBS]
    return knobs


class GoldenWithKnobOff:
    """The float64 golden run with one knob switched off."""

    dtype = "float32"  # judged by the float32 row: the knob must move outputs beyond it

    def __init__(self, field: str):
        self.field, self.name = field, f"golden-without-{field}"

    def forward(self, config, params, tokens, pixel_values=None):
        off = switched_off(config, self.field)
        images = pixel_values if off.vision is not None else None  # no tower: the placeholders stay text
        return impl_numpy.forward(off, _params_for(off, config, params), tokens, pixel_values=images)


def _params_for(off: ModelConfig, config: ModelConfig, params: dict) -> dict:
    """The case's weights, for the parameters both configs have; the knob's own parameters
    (a head weight when untied, a position table) come from the same deterministic init."""
    from lmref.spec.params import init_params

    fresh = init_params(off, 0)
    return {name: params[name] if name in params and params[name].shape == value.shape else value
            for name, value in fresh.items()}


KNOBS = [(arch, field) for arch in STORE.archs()
         for field in knobs_set(STORE.load(arch, STORE.case_names(arch)[0]).config)]


@pytest.mark.parametrize("arch,field", KNOBS, ids=[f"{a}-{f}" for a, f in KNOBS])
def test_switching_the_knob_off_changes_a_golden_output(arch, field):
    verdicts = {}
    for name in STORE.case_names(arch):
        case = STORE.load(arch, name)
        verdicts[name] = run_check(case, GoldenWithKnobOff(field), "forward").status
    assert FAIL in verdicts.values(), f"{arch}: no golden case sees {field} (all {verdicts})"


def test_the_feature_strategy_sets_the_image_token_count():
    """feature_strategy "full" keeps the class token: an image fills one placeholder more, so a
    port that keeps it where LLaVA drops it cannot fill a stored case's placeholders."""
    for arch in [a for a in STORE.archs() if STORE.load(a, STORE.case_names(a)[0]).config.vision is not None]:
        case = STORE.load(arch, next(n for n in STORE.case_names(arch) if "image" in n))
        v = case.config.vision
        full = dataclasses.replace(case.config, vision=dataclasses.replace(v, feature_strategy="full"))
        assert (v.feature_strategy, full.vision.tokens_per_image) == ("drop_class", v.tokens_per_image + 1)
        with pytest.raises(InputError, match="image tokens"):
            impl_numpy.forward(full, case.params(), case.tokens, pixel_values=case.pixel_values)


def test_every_stored_arch_has_knobs_under_test():
    assert {arch for arch, _ in KNOBS} == set(STORE.archs())
    assert ("llama3.1", "rope_scaling") in KNOBS and ("olmo", "norm_weight") in KNOBS
    assert ("qwen1.5-moe-a2.7b", "moe.renormalize") in KNOBS and ("mixtral-8x7b", "moe") in KNOBS


MOE_ARCHS = [arch for arch in STORE.archs() if STORE.load(arch, STORE.case_names(arch)[0]).config.moe is not None]


@dataclasses.dataclass
class GoldenWithLossKnobOff:
    """The float64 golden whose loss has one loss-only knob off ("moe.aux_loss_coef", ...,
    "logit_z_loss_coef")."""

    knob: str
    dtype = "float32"

    def forward(self, config, params, tokens):
        return impl_numpy.forward(config, params, tokens)

    def loss(self, config, params, tokens):
        return impl_numpy.loss(switched_off(config, self.knob), params, tokens)


def _loss_knobs_set() -> list[tuple[str, str]]:
    """(arch, knob) for every loss-only knob an arch's cases set away from its default."""
    configs = {arch: STORE.load(arch, STORE.case_names(arch)[0]).config for arch in STORE.archs()}
    moe = [(arch, f"moe.{knob}") for arch in MOE_ARCHS for knob in MOE_LOSS_KNOBS
           if getattr(configs[arch].moe, knob) != MOE_DEFAULTS[knob]]
    return moe + [(arch, knob) for arch, config in configs.items() for knob in LOSS_KNOBS
                  if getattr(config, knob) != DEFAULTS[knob]]


@pytest.mark.parametrize("arch, knob", _loss_knobs_set())
def test_the_loss_knobs_are_alive(arch, knob):
    """Each loss-only knob (the load-balancing weight, its per-layer kind, the router z-loss
    weight, PaLM's logit z-loss weight) moves its arch's golden loss beyond the float32 loss row."""
    verdicts = {name: run_check(STORE.load(arch, name), GoldenWithLossKnobOff(knob), "loss").status
                for name in STORE.case_names(arch)}
    assert set(verdicts.values()) == {FAIL}, f"{arch}: {knob} is invisible in {verdicts}"


def test_every_loss_knob_is_set_somewhere():
    assert {knob for _, knob in _loss_knobs_set()} == {f"moe.{k}" for k in MOE_LOSS_KNOBS} | set(LOSS_KNOBS)
