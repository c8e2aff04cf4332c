"""RoPE settings of the llama-style configs (llama, olmo), both ways.

transformers 5.x keeps them in `rope_parameters` {"rope_type", "rope_theta", ...}; older
config.json files have a top-level `rope_theta` and `rope_scaling` {"type" or "rope_type",
...}.  Precedence follows `RotaryEmbeddingConfigMixin.convert_rope_params_to_dict` and
`standardize_rope_params` (modeling_rope_utils.py, 5.23): `rope_scaling` wins over
`rope_parameters` (lmref refuses a file where the two disagree); a theta inside the dict
wins over the top-level one, default 10000; a "rope_type" key wins over a legacy "type"; for
llama3 a top-level `original_max_position_embeddings` wins over the dict's, default
max_position_embeddings.  transformers 4.x reads the top-level `rope_theta` and the dict's
`original_max_position_embeddings`, so lmref refuses a file where the top-level and a dict's
value differ.  Every number must be a JSON number (an integer where transformers takes a
length); anything else is refused naming the field, as is everything else lmref cannot map.
"""

from __future__ import annotations

from lmref.convert.fields import HFConfig
from lmref.spec.config import ModelConfig, RopeScaling

DEFAULT_THETA = 10_000.0  # RotaryEmbeddingConfigMixin.default_theta
SUPPORTED = ("default", "linear", "llama3")  # the rope types lmref implements
# What the llama-style types express (spec/features.py).  LlamaRotaryEmbedding and
# OlmoRotaryEmbedding rotate halves; an interleaved model is exported with its q, k columns
# permuted (`rope_columns_permutation`), the same computation.
ROPE_FEATURES = ("positions.rope", "rope.interleaved", "rope.scaling.linear", "rope.scaling.llama3")


def rope_from_hf(cfg: HFConfig, max_seq_len: int, default_theta: float = DEFAULT_THETA
                 ) -> tuple[float, RopeScaling | None]:
    """(rope_theta, rope_scaling) of a llama-style config.json; `default_theta` when it gives
    none (the class's `default_theta`: 1e6 for MixtralConfig).

    A config may hold both dicts (`lmref convert --to-hf` writes both, for transformers 4.x
    and 5.x) and a top-level `rope_theta`.  Each is read on its own; when they say different
    things, transformers 4.x and 5.x may run different models from one file, so the
    conversion is refused.
    """
    legacy, current = cfg.get("rope_scaling"), cfg.get("rope_parameters")
    theta = cfg.number("rope_theta", default_theta)
    read = [(key, rope_of_dict(cfg, key, params, max_seq_len, theta))
            for key, params in (("rope_parameters", current), ("rope_scaling", legacy)) if params]
    if not read:
        return rope_of_dict(cfg, "rope_parameters", {}, max_seq_len, theta)
    if len(read) == 2 and read[0][1] != read[1][1]:
        cfg.fail("rope_scaling", legacy, f"disagrees with rope_parameters={current!r}: "
                 f"{read[1][1]} vs {read[0][1]} (theta, scaling); transformers 4.x reads only rope_scaling")
    _check_top_level_theta(cfg, read)
    return read[-1][1]


def _check_top_level_theta(cfg: HFConfig, read: list[tuple[str, tuple]]) -> None:
    """Refuse a top-level `rope_theta` that a RoPE dict's own theta contradicts: transformers
    4.x rotates with the top-level one, 5.x with the dict's."""
    if "rope_theta" not in cfg.data:
        return
    top = cfg.data["rope_theta"]
    for key, (theta, _) in read:
        if theta != top:
            cfg.fail("rope_theta", top, f"disagrees with {key}.rope_theta={theta!r}: transformers 4.x rotates "
                     f"with the top-level rope_theta, 5.x with the one in {key}")


def rope_of_dict(cfg: HFConfig, key: str, given: dict, max_seq_len: int,
                 default_theta: float) -> tuple[float, RopeScaling | None]:
    """(rope_theta, rope_scaling) that one dict (`rope_parameters`, `rope_scaling`, or one
    layer type's entry of a nested `rope_parameters`) describes; `default_theta` when it
    holds none.  Every number must be a JSON number (ConversionError naming the field)."""
    if not isinstance(given, dict):
        cfg.fail(key, given, "expected a JSON object of RoPE parameters")
    params = dict(given)
    theta = cfg.checked_number(f"{key}.rope_theta", params.pop("rope_theta", default_theta))
    legacy_type = params.pop("type", "default")
    kind = params.pop("rope_type", legacy_type)
    # Llama's default RoPE ignores partial_rotary_factor but its llama3 scaling reads it:
    # only the full rotation is the same everywhere.
    partial = params.pop("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        cfg.fail(f"{key}.partial_rotary_factor", partial, "only full-head RoPE (1.0) is supported")
    scaling = None
    if kind == "linear":
        scaling = RopeScaling(kind="linear", factor=_number(cfg, key, params, "factor"))
    elif kind == "llama3":
        scaling = RopeScaling(
            kind="llama3", factor=_number(cfg, key, params, "factor"),
            low_freq_factor=_number(cfg, key, params, "low_freq_factor"),
            high_freq_factor=_number(cfg, key, params, "high_freq_factor"),
            original_max_seq_len=_llama3_original(cfg, key, params, max_seq_len))
    elif kind != "default":
        cfg.fail(f"{key}.rope_type", kind, f"lmref implements {', '.join(SUPPORTED)}")
    if params:
        cfg.fail(f"{key}.{sorted(params)[0]}", params[sorted(params)[0]],
                 f"not a parameter of rope_type {kind!r} that lmref maps")
    return theta, scaling


def _llama3_original(cfg: HFConfig, key: str, params: dict, max_seq_len: int) -> int:
    """llama3's `original_max_position_embeddings`: the top-level one (transformers 5.x puts it
    over the dict's), else the dict's, else max_position_embeddings; an integer.  A top-level
    one and the dict's must agree: transformers 4.x reads only the dict's."""
    top = cfg.get("original_max_position_embeddings")
    name = f"{key}.original_max_position_embeddings"
    stated = "original_max_position_embeddings" in params
    in_dict = cfg.checked_integer(name, params.pop("original_max_position_embeddings", max_seq_len))
    if top is None:
        return in_dict
    top = cfg.checked_integer("original_max_position_embeddings", top)
    if stated and in_dict != top:
        cfg.fail("original_max_position_embeddings", top, f"disagrees with {name}={in_dict!r}: transformers 5.x "
                 "runs the top-level one, 4.x rope_scaling's")
    return top


def _number(cfg: HFConfig, where: str, params: dict, key: str) -> float:
    """The required number `key` of the RoPE dict `where`, taken out of `params`."""
    return cfg.checked_number(f"{where}.{key}", _pop(cfg, where, params, key))


def _pop(cfg: HFConfig, where: str, params: dict, key: str):
    if key not in params:
        cfg.fail(f"{where}.{key}", None, "required by this rope_type")
    return params.pop(key)


# --- partial RoPE stated in several places (gpt_neox, phi, phi3): read each, refuse disagreement ---


def rope_dicts(cfg: HFConfig) -> list[tuple[str, dict]]:
    """(key, dict) of each RoPE dict the file has: 5.x's `rope_parameters`, 4.x's
    `rope_scaling`; ConversionError for one that is not a JSON object."""
    dicts = [(key, cfg.get(key)) for key in ("rope_parameters", "rope_scaling") if cfg.get(key) is not None]
    for key, params in dicts:
        if not isinstance(params, dict):
            cfg.fail(key, params, "expected a JSON object of RoPE parameters")
    return dicts


def stated(cfg: HFConfig, dicts: list[tuple[str, dict]], top: str, inner: str) -> list[tuple[str, object]]:
    """(field, value) of each field stating one RoPE number: `top` in config.json, `inner` in
    each RoPE dict."""
    return ([(top, cfg.get(top))] if top in cfg.data else []) + [(f"{k}.{inner}", p[inner]) for k, p in dicts
                                                                   if inner in p]


def agreed(cfg: HFConfig, given: list[tuple[str, object]], default: tuple[str, float], why: str
           ) -> tuple[str, float]:
    """(field, value): the one value the fields `given` state, and the first of them;
    `default` when none does.  ConversionError naming two that disagree, and `why` that matters."""
    for name, value in given:
        if isinstance(value, bool) or not isinstance(value, int | float):
            cfg.fail(name, value, "expected a number")
    if len({value for _, value in given}) > 1:
        (first, value), *others = given
        cfg.fail(first, value, "disagrees with " + ", ".join(f"{k}={v!r}" for k, v in others)
                 + f": {why}")
    name, value = given[0] if given else default
    return name, float(value)


def rope_number(cfg: HFConfig, dicts: list[tuple[str, dict]], key: str, default: float) -> tuple[str, float]:
    """(field, value) of `key` (rope_theta or partial_rotary_factor) as transformers 5.23 runs it
    (phi, phi3).

    `convert_rope_params_to_dict`: a `rope_scaling` dict replaces `rope_parameters` whole, so
    then the latter's copy is never read (nor by 4.x); it must say the same or be absent."""
    run = [(k, params) for k, params in dicts if k == "rope_scaling"] or dicts
    field, value = agreed(cfg, stated(cfg, run, key, key), (key, default),
                          "transformers 4.x reads the top-level field, 5.x the RoPE dicts first")
    for name, ignored in stated(cfg, dicts, key, key):
        if ignored != value:
            cfg.fail(name, ignored, f"transformers ignores it (5.x reads rope_scaling over rope_parameters, 4.x "
                     f"neither) and runs {value!r}")
    return field, value


def check_rotary_width(cfg: HFConfig, key: str, head_dim: int, fraction: float) -> None:
    """transformers rotates int(head_dim * fraction) dims (GPTNeoXAttention and PhiAttention
    `rotary_ndims`, their rotary embeddings' `dim`): an odd width makes it rotate one more dim than that, with
    frequencies over the odd width (`arange(0, dim, 2) / dim`), which lmref cannot express."""
    width = int(head_dim * fraction)
    if not 0 < fraction <= 1 or width == 0 or width % 2:
        cfg.fail(key, fraction, f"rotates int({head_dim} * {fraction}) = {width} of each head's {head_dim} "
                 "dims; lmref needs an even width of at least 2 (and a fraction in (0, 1])")


def agreed_scaling(cfg: HFConfig, dicts: list[tuple[str, dict]], max_seq_len: int, theta: float
                   ) -> RopeScaling | None:
    """The scaling `rope_parameters` and `rope_scaling` state (convert/rope.py reads each: linear,
    llama3, or refused by name), which must agree: 5.23 runs `rope_scaling` over
    `rope_parameters`, 4.57 only `rope_scaling`."""
    read = []
    for key, params in dicts:
        # theta and the fraction are read above; rope_of_dict, which refuses a partial
        # rotation (LLaMA's RoPE ignores the factor), is handed the full one
        rest = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
        read.append((key, rope_of_dict(cfg, key, rest | {"partial_rotary_factor": 1.0}, max_seq_len, theta)[1]))
    if len(read) == 2 and read[0][1] != read[1][1]:
        cfg.fail("rope_scaling", cfg.get("rope_scaling"),
                 f"disagrees with rope_parameters={cfg.get('rope_parameters')!r}: {read[1][1]} vs {read[0][1]}; "
                 "transformers 4.x reads only rope_scaling")
    return read[0][1] if read else None


def rope_scaling_rule(config: ModelConfig) -> tuple[str, bool, str]:
    """transformers computes every rope_type its own way (modeling_rope_utils.py
    `ROPE_INIT_FUNCTIONS`), with parameters lmref does not write: only the kinds lmref reads
    back are exported."""
    kind = "default" if config.rope_scaling is None else config.rope_scaling.kind
    return ("rope_scaling", kind in SUPPORTED, f"kind {kind!r} is not converted; lmref converts {', '.join(SUPPORTED)}")


def rope_to_hf(config: ModelConfig) -> dict:
    """`rope_parameters` in transformers 5.x form."""
    s = config.rope_scaling
    params: dict = {"rope_type": "default" if s is None else s.kind, "rope_theta": float(config.rope_theta)}
    if s is not None:
        params["factor"] = float(s.factor)
    if s is not None and s.kind == "llama3":
        params |= {"low_freq_factor": float(s.low_freq_factor), "high_freq_factor": float(s.high_freq_factor),
                   "original_max_position_embeddings": int(s.original_max_seq_len)}
    return params


def rope_columns_permutation(n_heads: int, head_dim: int, layout: str) -> tuple[int, ...] | None:
    """The column order that turns an interleaved-RoPE q or k projection into the halves layout
    of transformers' `rotate_half`; None for the halves layout (nothing to do).

    Interleaved RoPE rotates the pairs (2i, 2i+1) of a head, `rotate_half` the pairs
    (i, i + hd/2), both with angle p * inv_freq_i.  Listing each head's columns as
    [0, 2, 4, ..., 1, 3, 5, ...] puts dim 2i at i and dim 2i+1 at i + hd/2, so HF rotates
    exactly the pairs the model was trained with; q.k is unchanged because q and k get the
    same reordering.  (The same `permute` as transformers' convert_llama_weights_to_hf.py for
    Meta checkpoints.)  v is not rotated and keeps its order.
    """
    if layout == "halves":
        return None
    within = [*range(0, head_dim, 2), *range(1, head_dim, 2)]
    return tuple(h * head_dim + j for h in range(n_heads) for j in within)
