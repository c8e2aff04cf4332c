"""GGUF files for llama.cpp and other GGML engines: (ModelConfig, canonical params) -> float32 .gguf.

    from lmref.convert.gguf import write_gguf
    write_gguf(config, params, "model.gguf")    # needs the `gguf` package (the `gguf` extra)

The llama.cpp architecture comes from `config.hf_model_type`, as llama.cpp's
convert_hf_to_gguf.py picks it from a Hugging Face `architectures` entry: llama and mistral
-> "llama", gpt2 -> "gpt2", mpt -> "mpt", olmo -> "olmo" (GGUF_ARCHS).  Any other type is refused
as not mapped yet.  Each architecture's graph in llama.cpp fixes some knobs (a llama block has
no sliding window, no biases, RMSNorm, SwiGLU, ...): `check_expressible` refuses a config whose
value differs, naming the knob.  Every ModelConfig field is either fixed that way, carried
into the file (sizes, eps, theta, ...) or irrelevant to the logits (tests check the cover).

What the file holds, following convert_hf_to_gguf.py (ggml-org/llama.cpp):
- tensors in float32, each in PyTorch's `nn.Linear` orientation ([d_out, d_in]: lmref's
  `x @ W` weights transposed), named as gguf's TENSOR_NAMES; a tied head writes no `output`
  (llama.cpp then reads `token_embd`, as for a tied Hugging Face model);
- GPT-2 and MPT fuse q, k, v into `attn_qkv` (rows q, then k, then v), as their HF weights are;
- Q and K rows of a RoPE model in GGML's rotary order: GGML's "normal" RoPE, which llama.cpp's
  llama and olmo graphs use, rotates adjacent pairs (2i, 2i+1), where transformers' `rotate_half`
  (lmref's "halves" layout, docs/adapters.md "RoPE layouts") rotates (i, i + hd/2).
  convert_hf_to_gguf.py's `LlamaModel.permute` reorders each head's rows
  (`reshape(n_head, 2, hd // 2, ...).swapaxes(1, 2)`); `ggml_rotary_rows` is that order.  An
  "interleaved" config is already in GGML's order;
- `rope_freqs` for llama3 RoPE scaling: one divisor per rotated pair, as
  `LlamaModel.generate_extra_tensors` computes it (`llama3_rope_freqs`);
- no tokenizer: `tokenizer.ggml.model` "none" and `{arch}.vocab_size`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from lmref.convert.errors import ConversionError
from lmref.spec.config import ModelConfig
from lmref.spec.params import check_params

GGUF_ARCHS = {"llama": "llama", "mistral": "llama", "gpt2": "gpt2", "mpt": "mpt", "olmo": "olmo"}

# Knobs every mapped graph fixes (none of the four has these features in llama.cpp).
_NO_EXTRAS = dict(
    attn_chunk_size=None, attn_softcap=None, attn_temperature_floor=None, attn_temperature_scale=None,
    embedding_norm=False, embedding_scale="none", final_logit_softcap=None, lm_head_bias=False, logit_scale=1.0,
    moe=None, norm_placement="pre", norm_unit_offset=False, parallel_residual=False, qk_norm="none",
    query_scale_dim=None, rope_theta_local=None, shared_attn_norm=False, sliding_window=None, vision=None,
)
_BIASES_OFF = dict(mlp_bias=False, qkv_bias=False, attn_out_bias=False)
# {GGUF arch: {knob: the value llama.cpp's graph computes}}
REQUIRED = {
    "llama": _NO_EXTRAS | _BIASES_OFF | dict(position="rope", rope_fraction=1.0, norm="rmsnorm", norm_weight=True,
                                             norm_bias=False, mlp="gated", activation="silu", qkv_clip=None),
    "olmo": _NO_EXTRAS | _BIASES_OFF | dict(position="rope", rope_fraction=1.0, rope_scaling=None, norm="layernorm",
                                            norm_weight=False, norm_bias=False, mlp="gated", activation="silu"),
    "gpt2": _NO_EXTRAS | dict(position="learned", norm="layernorm", norm_weight=True, norm_bias=True, mlp="plain",
                              activation="gelu_tanh", mlp_bias=True, qkv_bias=True, attn_out_bias=True, qkv_clip=None),
    "mpt": _NO_EXTRAS | _BIASES_OFF | dict(position="alibi", alibi_slopes="press", norm="layernorm", norm_weight=True,
                                           norm_bias=False, mlp="plain", activation="gelu"),
}
_SIZES = ("d_model", "n_heads", "n_kv_heads", "head_dim", "n_layers", "d_ff", "vocab_size", "max_seq_len",
          "norm_eps", "tie_embeddings")
# {GGUF arch: the knobs written into the file (metadata or tensors), free to take any valid value}
CARRIED = {
    "llama": (*_SIZES, "rope_theta", "rope_layout", "rope_scaling"),
    "olmo": (*_SIZES, "rope_theta", "rope_layout", "qkv_clip"),
    "gpt2": _SIZES,
    "mpt": (*_SIZES, "alibi_max_bias", "qkv_clip"),
}
# Knobs that do not change a forward pass of the arch: names, the training loss, the per-layer
# patterns (checked apart: every layer "global" attention and "dense" MLP), the other position
# schemes' parameters.
IGNORED = ("name", "hf_model_type", "logit_z_loss_coef", "attn_pattern", "mlp_pattern", "rope_theta",
           "rope_layout", "rope_scaling", "rope_fraction", "alibi_max_bias", "alibi_slopes")


def require_gguf():
    """The `gguf` module, or ConversionError saying how to install it (the `gguf` extra)."""
    try:
        import gguf
    except ImportError:
        raise ConversionError("writing GGUF needs the gguf package: pip install 'lmref[gguf]'") from None
    return gguf


def gguf_arch(config: ModelConfig) -> str:
    """The llama.cpp architecture of `config`, or ConversionError naming the arch as not mapped."""
    arch = GGUF_ARCHS.get(config.hf_model_type or "")
    if arch is None:
        raise ConversionError(
            f"config {config.name!r} (hf_model_type {config.hf_model_type!r}): not mapped to a GGUF architecture "
            f"yet; mapped: {', '.join(f'{t} -> {a}' for t, a in GGUF_ARCHS.items())}")
    return arch


def _refuse(config: ModelConfig, arch: str, knob: str, value, why: str) -> ConversionError:
    return ConversionError(f"config {config.name!r}: {knob}={value!r} cannot be written as GGUF: llama.cpp's "
                           f"{arch!r} architecture {why}")


def check_expressible(config: ModelConfig, arch: str) -> None:
    """ConversionError naming the first knob whose value `arch`'s llama.cpp graph does not compute."""
    for knob, required in REQUIRED[arch].items():
        value = getattr(config, knob)
        if value != required:
            raise _refuse(config, arch, knob, value, f"computes {knob}={required!r}")
    for knob, kind in (("attn_pattern", "global"), ("mlp_pattern", "dense")):
        if set(getattr(config, knob)) != {kind}:
            raise _refuse(config, arch, knob, getattr(config, knob), f"has only {kind!r} layers")
    scaling = config.rope_scaling
    if arch == "llama" and scaling is not None and scaling.kind != "llama3":
        raise _refuse(config, arch, "rope_scaling.kind", scaling.kind, "is mapped here with llama3 scaling only")
    if arch != "llama" and config.n_heads * config.head_dim != config.d_model:
        raise _refuse(config, arch, "head_dim", config.head_dim,
                      f"sizes its heads d_model / n_heads = {config.d_model / config.n_heads:g}")
    if arch in ("gpt2", "mpt") and config.n_kv_heads != config.n_heads:
        raise _refuse(config, arch, "n_kv_heads", config.n_kv_heads, f"has n_kv_heads = n_heads ({config.n_heads})")


# --- tensors ----------------------------------------------------------------------------------


def ggml_rotary_rows(n_heads: int, head_dim: int) -> np.ndarray:
    """The order of q or k rows ([n_heads*hd, d_in], HF orientation) in GGML's rotary layout:
    row `h*hd + 2j + k` of the result is row `h*hd + k*hd/2 + j` of the halves layout
    (j < hd/2, k in {0, 1}); the index form of convert_hf_to_gguf.py's LlamaModel.permute."""
    rows = np.arange(n_heads * head_dim).reshape(n_heads, 2, head_dim // 2)  # [head, half k, pair j]
    return rows.swapaxes(1, 2).reshape(-1)  # [head, pair j, half k] -> flat


def llama3_rope_freqs(config: ModelConfig) -> np.ndarray:
    """float32 [head_dim / 2]: the divisor of each pair's inverse frequency under llama3 scaling,
    as convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors computes it from the float32
    frequencies `1 / base ** (arange(0, dim, 2) / dim)` (the branches here in float64, then
    rounded): 1 for a wavelength under `L / high_freq_factor`, `factor` over `L / low_freq_factor`,
    `1 / ((1 - smooth) / factor + smooth)` in between (spec/MATH.md "llama3").  llama.cpp divides
    each pair's frequency by it (ggml_rope_ext's freq_factors)."""
    s, dim = config.rope_scaling, config.head_dim
    freqs = 1.0 / (np.float32(config.rope_theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    low_wavelen = s.original_max_seq_len / s.low_freq_factor
    high_wavelen = s.original_max_seq_len / s.high_freq_factor
    factors = []
    for freq in freqs.astype(np.float64):
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(s.factor)
        else:
            smooth = (s.original_max_seq_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
            factors.append(1 / ((1 - smooth) / s.factor + smooth))
    return np.array(factors, dtype=np.float32)


def _attention(config: ModelConfig, arch: str, p: dict, i: int) -> dict[str, np.ndarray]:
    src, out = f"layers.{i}.attn.", f"blk.{i}."
    tensors = {f"{out}attn_output.weight": p[f"{src}wo"].T}
    if arch in ("gpt2", "mpt"):  # q, k, v fused, rows in that order
        tensors[f"{out}attn_qkv.weight"] = np.concatenate([p[f"{src}w{x}"] for x in "qkv"], axis=1).T
        if config.qkv_bias:
            tensors[f"{out}attn_qkv.bias"] = np.concatenate([p[f"{src}b{x}"] for x in "qkv"])
        if config.attn_out_bias:
            tensors[f"{out}attn_output.bias"] = p[f"{src}bo"]
        return tensors
    q, k = p[f"{src}wq"].T, p[f"{src}wk"].T  # [n*hd, d_model]
    if config.rope_layout == "halves":
        q, k = q[ggml_rotary_rows(config.n_heads, config.head_dim)], k[ggml_rotary_rows(config.n_kv_heads, config.head_dim)]
    return tensors | {f"{out}attn_q.weight": q, f"{out}attn_k.weight": k, f"{out}attn_v.weight": p[f"{src}wv"].T}


def _norm(p: dict, source: str, target: str) -> dict[str, np.ndarray]:
    return {f"{target}.{part}": p[f"{source}.{part}"] for part in ("weight", "bias") if f"{source}.{part}" in p}


def _layer(config: ModelConfig, arch: str, p: dict, i: int) -> dict[str, np.ndarray]:
    src, out = f"layers.{i}.", f"blk.{i}."
    tensors = _norm(p, f"{src}attn_norm", f"{out}attn_norm") | _attention(config, arch, p, i)
    tensors |= _norm(p, f"{src}mlp_norm", f"{out}ffn_norm")
    for part in ("gate", "up", "down"):
        if f"{src}mlp.w_{part}" in p:
            tensors[f"{out}ffn_{part}.weight"] = p[f"{src}mlp.w_{part}"].T
        if f"{src}mlp.b_{part}" in p:
            tensors[f"{out}ffn_{part}.bias"] = p[f"{src}mlp.b_{part}"]
    return tensors


def gguf_tensors(config: ModelConfig, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{GGUF tensor name: float32 array}, every canonical parameter placed exactly once."""
    arch = gguf_arch(config)
    check_expressible(config, arch)
    check_params(config, params)
    tensors = {"token_embd.weight": params["embed.tokens"]}
    if "embed.positions" in params:
        tensors["position_embd.weight"] = params["embed.positions"]
    if config.rope_scaling is not None:
        tensors["rope_freqs.weight"] = llama3_rope_freqs(config)
    for i in range(config.n_layers):
        tensors |= _layer(config, arch, params, i)
    tensors |= _norm(params, "final_norm", "output_norm")
    if not config.tie_embeddings:
        tensors["output.weight"] = params["lm_head.weight"].T
    return {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in tensors.items()}


# --- the file ---------------------------------------------------------------------------------


def _metadata(writer, config: ModelConfig, arch: str) -> None:
    """The keys convert_hf_to_gguf.py writes for `arch` (TextModel.set_gguf_parameters and the
    arch's class), through gguf.GGUFWriter's methods."""
    import gguf

    writer.add_name(config.name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.d_model)
    writer.add_block_count(config.n_layers)
    writer.add_feed_forward_length(config.d_ff)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.n_kv_heads)
    writer.add_vocab_size(config.vocab_size)
    if arch == "llama":
        writer.add_layer_norm_rms_eps(config.norm_eps)
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    else:
        writer.add_layer_norm_eps(config.norm_eps)
    if config.position == "rope":
        writer.add_rope_freq_base(config.rope_theta)
        writer.add_rope_dimension_count(config.head_dim)
    if arch == "mpt":
        writer.add_max_alibi_bias(config.alibi_max_bias)
    if config.qkv_clip is not None:
        writer.add_clamp_kqv(config.qkv_clip)
    writer.add_tokenizer_model("none")  # no vocabulary: token ids in, logits out


def write_gguf(config: ModelConfig, params: dict[str, np.ndarray], path: str | Path) -> Path:
    """Write `path` (a new .gguf file): the metadata and every tensor in float32.  Refuses,
    before writing anything, a config no mapped llama.cpp architecture expresses."""
    gguf = require_gguf()
    tensors = gguf_tensors(config, params)  # refuses first
    arch = gguf_arch(config)
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), arch)
    _metadata(writer, config, arch)
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def covered_fields(arch: str) -> set[str]:
    """Every ModelConfig field the mapping of `arch` accounts for (fixed, carried or ignored)."""
    return set(REQUIRED[arch]) | set(CARRIED[arch]) | set(IGNORED)


def all_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(ModelConfig)}
