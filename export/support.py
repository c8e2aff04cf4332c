"""What the export wrapper computes, and the refusal of everything else.

The wrapper (export/decoder.py) reuses impl_torch's embedding, blocks, norms and head, and
builds the rest itself: the attention mask over past + current keys, the positions (RoPE
angles, ALiBi distances) and the concat-style KV cache.  spec.config.IMPLEMENTED may grow
before this file does (new math lands in the golden and the twins first); a config using
such a knob is refused here, by name, rather than exported with the knob ignored.
"""

from __future__ import annotations

from spec.config import ModelConfig

from export.errors import ExportError

# Categorical knobs: the values the export handles, and why the others are not there yet.
EXPORTABLE: dict[str, frozenset] = {
    "norm_placement": frozenset({"pre"}),
    # "sliding" / "chunked" need their band masks built explicitly in export/masks.py
    # (decomposed exports have dropped the window silently: sonos/tract#2323).
    "attn_kinds": frozenset({"global"}),
    # "moe" needs a static loop over every expert, no data-dependent routing loop
    # (huggingface/transformers#38518).
    "mlp_kinds": frozenset({"dense"}),
    "qk_norm": frozenset({"none"}),
    # "dynamic" rescales by the current sequence length: data-dependent (pytorch#143222).
    "rope_scaling": frozenset({"linear", "llama3"}),
    "embedding_scale": frozenset({"none"}),
}

# Knobs that change what the wrapper builds itself (masks, positions): they must be unset.
WRAPPER_BUILT = ("sliding_window", "attn_chunk_size", "attn_temperature_floor", "rope_theta_local")


def _values(config: ModelConfig) -> dict[str, tuple]:
    """The config's value(s) of each categorical knob in EXPORTABLE."""
    scaling = config.rope_scaling
    return {
        "norm_placement": (config.norm_placement,),
        "attn_kinds": config.layer_attn_kinds,
        "mlp_kinds": config.layer_mlp_kinds,
        "qk_norm": (config.qk_norm,),
        "rope_scaling": () if scaling is None else (scaling.kind,),
        "embedding_scale": (config.embedding_scale,),
    }


def unsupported(config: ModelConfig) -> list[str]:
    """One line per knob of `config` that the export does not compute (empty: exportable)."""
    problems = [
        f"{knob} {value!r} (exportable: {', '.join(sorted(EXPORTABLE[knob]))})"
        for knob, values in _values(config).items()
        for value in dict.fromkeys(values)
        if value not in EXPORTABLE[knob]
    ]
    problems += [f"{name}={getattr(config, name)!r} (must be unset)"
                 for name in WRAPPER_BUILT if getattr(config, name) is not None]
    return problems


def check_exportable(config: ModelConfig) -> None:
    """Raise ExportError naming every knob of `config` the ONNX export cannot handle."""
    problems = unsupported(config)
    if problems:
        raise ExportError(f"the ONNX export does not implement {config.name}'s "
                          + "; ".join(problems))
