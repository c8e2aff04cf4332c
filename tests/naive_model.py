"""A naive, loop-by-loop model to compare the golden with: one sequence, one position, one
head at a time, written from spec/MATH.md without NumPy's broadcasting or impl_numpy's code.

It follows the math of every feature the golden computes (the per-layer plan's mask, RoPE and
norms are re-derived here from the config's fields, by hand), so that a broadcasting or
reshaping slip in impl_numpy cannot pass tests/test_golden_model.py.
"""

from __future__ import annotations

import math

import numpy as np

from lmref.spec.config import ModelConfig


def mpt_slopes(n: int, max_bias: float = 8.0) -> np.ndarray:
    """MPT `build_mpt_alibi_tensor`'s slopes, written as in HF."""
    p = 2 ** math.ceil(math.log2(n))
    slopes = 1.0 / np.power(2.0, np.arange(1, p + 1, dtype=np.float64) * (max_bias / p))
    if p != n:
        slopes = np.concatenate([slopes[1::2], slopes[::2]])[:n]
    return slopes


def olmo_slopes(n: int, max_bias: float = 8.0) -> np.ndarray:
    """AI2's OLMo `alibi_attention_bias` (olmo/model.py), written as there:
    m = arange(1, n + 1) * (alibi_bias_max / n); slopes 1 / 2^m."""
    m = np.arange(1, n + 1, dtype=np.float64) * (max_bias / n)
    return 1.0 / (2 ** m)


def hf_llama3(theta: float, dim: int, factor: float, low: float, high: float, orig: int) -> list[float]:
    """Meta's `apply_scaling` (llama-models models/llama4/model.py; HF `_compute_llama3_parameters`
    agrees), scalar by scalar: the smoothing is computed only inside the band, which is empty
    when low == high (Llama 4 Scout)."""
    out = []
    for i in range(0, dim, 2):
        inv = 1.0 / theta ** (i / dim)
        wavelen = 2 * math.pi / inv
        if wavelen < orig / high:
            out.append(inv)
        elif wavelen > orig / low:
            out.append(inv / factor)
        else:
            smooth = (orig / wavelen - low) / (high - low)
            out.append((1 - smooth) * inv / factor + smooth * inv)
    return out


def _rms(v: np.ndarray, eps: float) -> np.ndarray:
    return v / math.sqrt(math.fsum(x * x for x in v) / len(v) + eps)


def _scale(c: ModelConfig, p: dict, prefix: str) -> np.ndarray:
    w = p[f"{prefix}.weight"]
    return 1.0 + w if c.norm_unit_offset else w


def _naive_norm(c: ModelConfig, p: dict, prefix: str, x: np.ndarray) -> np.ndarray:
    n = len(x)
    if c.norm == "layernorm":
        mean = math.fsum(x) / n
        var = math.fsum((v - mean) ** 2 for v in x) / n
        y = (x - mean) / math.sqrt(var + c.norm_eps)
    else:
        y = _rms(x, c.norm_eps)
    if c.norm_weight:
        y = y * _scale(c, p, prefix)
    if c.norm_bias:
        y = y + p[f"{prefix}.bias"]
    return y


def _naive_qk_norm(c: ModelConfig, p: dict, prefix: str, v: np.ndarray) -> np.ndarray:
    """RMSNorm of a head's dims or of a whole projection (spec/MATH.md, "QK norm")."""
    y = _rms(v, c.norm_eps)
    return y * _scale(c, p, prefix) if c.norm_weight else y


def _naive_act(name: str, x: np.ndarray) -> np.ndarray:
    f = {
        "gelu": lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))),
        "gelu_tanh": lambda v: 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))),
        "gelu_tanh_truncated": lambda v: 0.5 * v * (1 + math.tanh(0.79788456 * (v + 0.044715 * v**3))),  # BLOOM
        "silu": lambda v: v / (1 + math.exp(-v)),
        "relu": lambda v: max(v, 0.0),
    }[name]
    return np.array([f(float(v)) for v in x])


def _naive_freqs(c: ModelConfig, local: bool, seq_len: int) -> list[float]:
    """Inverse frequencies of a layer in a sequence of `seq_len`: Gemma 3's local layers use their
    own base, unscaled; LongRoPE divides by the long factors past the original context."""
    if local:
        return [c.rope_theta_local ** (-(2 * i) / c.rope_dim) for i in range(c.rope_dim // 2)]
    s = c.rope_scaling
    if s is not None and s.kind == "longrope":
        factors = s.long_factor if seq_len > s.original_max_seq_len else s.short_factor
        return [c.rope_theta ** (-(2 * i) / c.rope_dim) / factors[i] for i in range(c.rope_dim // 2)]
    if s is not None and s.kind == "llama3":
        return hf_llama3(c.rope_theta, c.rope_dim, s.factor, s.low_freq_factor, s.high_freq_factor,
                         s.original_max_seq_len)
    factor = s.factor if s is not None else 1.0
    return [c.rope_theta ** (-(2 * i) / c.rope_dim) / factor for i in range(c.rope_dim // 2)]


def _naive_rope(c: ModelConfig, v: np.ndarray, pos: int, local: bool, seq_len: int) -> np.ndarray:
    out = v.copy()
    r = c.rope_dim
    s = c.rope_scaling
    mscale = 1.0  # LongRoPE's attention factor on cos and sin
    if s is not None and s.kind == "longrope" and not local:
        mscale = s.attention_factor or (math.sqrt(1 + math.log(s.factor) / math.log(s.original_max_seq_len))
                                        if s.factor > 1 else 1.0)
    for i, f in enumerate(_naive_freqs(c, local, seq_len)):
        a, b = (i, i + r // 2) if c.rope_layout == "halves" else (2 * i, 2 * i + 1)
        cos, sin = mscale * math.cos(pos * f), mscale * math.sin(pos * f)
        out[a], out[b] = v[a] * cos - v[b] * sin, v[b] * cos + v[a] * sin
    return out


def _softcap(x: float, cap: float | None) -> float:
    return x if cap is None else cap * math.tanh(x / cap)


def _first_key(c: ModelConfig, kind: str, t: int) -> int:
    """The first key position query t sees in a layer of `kind` (causal from there to t)."""
    if kind == "sliding":
        return max(0, t - c.sliding_window + 1)  # q - W < k
    if kind == "chunked":
        return t - t % c.attn_chunk_size
    return 0


def _naive_attention(c: ModelConfig, p: dict, P: str, kind: str, x: list, slopes) -> list:
    """Layer P's attention output at each position of one sequence."""
    hd, group = c.head_dim, c.n_heads // c.n_kv_heads
    rotate = c.position == "rope" and kind != "global_nope"
    local = kind == "sliding" and c.rope_theta_local is not None
    scale = (c.query_scale_dim or hd) ** -0.5

    def proj(name, v):
        y = v @ p[f"{P}.attn.w{name}"] + (p[f"{P}.attn.b{name}"] if c.qkv_bias else 0.0)
        y = y if c.qkv_clip is None else np.clip(y, -c.qkv_clip, c.qkv_clip)
        if name != "v" and c.qk_norm == "per_projection":
            y = _naive_qk_norm(c, p, f"{P}.attn.{name}_norm", y)
        return y

    def head_of(y, name, j, pos):
        v = y[j * hd:(j + 1) * hd]
        if name != "v" and c.qk_norm == "per_head":
            v = _naive_qk_norm(c, p, f"{P}.attn.{name}_norm", v)
        v = _naive_rope(c, v, pos, local, len(x)) if name != "v" and rotate else v
        if name != "v" and rotate and c.qk_norm == "l2":  # Llama 4: after the RoPE, RoPE layers only
            v = v / math.sqrt(float(np.mean(v * v)) + c.norm_eps)
        if name == "q" and not rotate and c.attn_temperature_floor is not None:  # llama-models' NoPE layers
            v = v * (math.log(math.floor((pos + 1.0) / c.attn_temperature_floor) + 1.0) * c.attn_temperature_scale + 1.0)
        return v

    qs, ks, vs = [proj("q", v) for v in x], [proj("k", v) for v in x], [proj("v", v) for v in x]
    out = []
    for t in range(len(x)):
        heads = []
        for head in range(c.n_heads):
            kv = head // group  # query head h reads kv head h // group
            q = head_of(qs[t], "q", head, t)
            scores, values = [], []
            for s in range(_first_key(c, kind, t), t + 1):
                score = _softcap(float(q @ head_of(ks[s], "k", kv, s)) * scale, c.attn_softcap)
                if c.position == "alibi":
                    score -= slopes[head] * (t - s)
                scores.append(score)
                values.append(head_of(vs[s], "v", kv, s))
            top = max(scores)
            weights = [math.exp(sc - top) for sc in scores]
            total = math.fsum(weights)
            heads.append(sum(w / total * v for w, v in zip(weights, values)))
        out.append(np.concatenate(heads) @ p[f"{P}.attn.wo"] + (p[f"{P}.attn.bo"] if c.attn_out_bias else 0.0))
    return out


def _naive_mlp(c: ModelConfig, p: dict, P: str, y: np.ndarray) -> np.ndarray:
    b = c.mlp_bias
    up = y @ p[f"{P}.mlp.w_up"] + (p[f"{P}.mlp.b_up"] if b else 0.0)
    if c.mlp == "gated":
        gate = y @ p[f"{P}.mlp.w_gate"] + (p[f"{P}.mlp.b_gate"] if b else 0.0)
        hidden = _naive_act(c.activation, gate) * up
    else:
        hidden = _naive_act(c.activation, up)
    return hidden @ p[f"{P}.mlp.w_down"] + (p[f"{P}.mlp.b_down"] if b else 0.0)


def _naive_ffn(c: ModelConfig, weights: dict, y: np.ndarray) -> np.ndarray:
    """An expert (no biases): weights holds w_up, w_down and, gated, w_gate."""
    up = y @ weights["w_up"]
    hidden = _naive_act(c.activation, y @ weights["w_gate"]) * up if c.mlp == "gated" else _naive_act(c.activation, up)
    return hidden @ weights["w_down"]


def _naive_moe(c: ModelConfig, p: dict, P: str, y: np.ndarray) -> np.ndarray:
    """One token through a mixture of experts, written from the model cards: Mixtral's
    softmax-then-top-k (renormalised), Qwen1.5-MoE's unrenormalised weights, Llama 4's sigmoid
    of the top logit scaling the expert's input, a shared expert with or without its gate."""
    m, names = c.moe, (("w_gate", "w_up", "w_down") if c.mlp == "gated" else ("w_up", "w_down"))
    logits = [float(v) for v in y @ p[f"{P}.mlp.router"]]
    order = sorted(range(m.n_experts), key=lambda e: (-logits[e], e))[: m.n_experts_per_token]
    if m.router == "softmax_topk":
        top = max(logits)
        total = math.fsum(math.exp(z - top) for z in logits)
        weights = [math.exp(logits[e] - top) / total for e in order]
    else:
        weights = [1.0 / (1.0 + math.exp(-logits[e])) for e in order]
    if m.renormalize:
        weights = [w / math.fsum(weights) for w in weights]
    out = np.zeros_like(y)
    for e, w in zip(order, weights):
        expert = {n: p[f"{P}.mlp.experts.{n}"][e] for n in names}
        out = out + (_naive_ffn(c, expert, w * y) if m.router_scales_input else w * _naive_ffn(c, expert, y))
    if m.n_shared_experts:
        shared = _naive_ffn(c, {n: p[f"{P}.mlp.shared.{n}"] for n in names}, y)
        if m.shared_expert_gate:
            shared = shared / (1.0 + math.exp(-float(y @ p[f"{P}.mlp.shared_gate"][:, 0])))
        out = out + shared
    return out


def _wrapped(c: ModelConfig, p: dict, P: str, name: str, h: list, sublayer) -> list:
    """What sublayer `name` adds, its norms placed as c.norm_placement says."""
    x = h if c.norm_placement == "post_sublayer" else [_naive_norm(c, p, f"{P}.{name}_norm", v) for v in h]
    out = sublayer(x)
    if c.norm_placement != "pre":
        out = [_naive_norm(c, p, f"{P}.{name}_post_norm", v) for v in out]
    return out


def naive_forward(c: ModelConfig, p: dict, tokens: np.ndarray) -> np.ndarray:
    """Logits [B, S, vocab]; ALiBi slopes from MPT's formula, or OLMo's for "geometric"."""
    slopes = (olmo_slopes if c.alibi_slopes == "geometric" else mpt_slopes)(c.n_heads, c.alibi_max_bias)
    embed_scale = math.sqrt(c.d_model) if c.embedding_scale == "sqrt_d_model" else 1.0
    out = []
    for seq in tokens:
        # BLOOM's embedding norm acts on the looked-up row, before any scale or position
        rows = [_naive_norm(c, p, "embed.norm", p["embed.tokens"][t]) if c.embedding_norm else p["embed.tokens"][t]
                for t in seq]
        h = [row * embed_scale + (p["embed.positions"][i] if c.position == "learned" else 0.0)
             for i, row in enumerate(rows)]
        for layer in range(c.n_layers):
            P = f"layers.{layer}"
            kind = c.attn_pattern[layer % len(c.attn_pattern)]
            ffn = _naive_moe if c.mlp_pattern[layer % len(c.mlp_pattern)] == "moe" else _naive_mlp
            attend = lambda x, P=P, kind=kind: _naive_attention(c, p, P, kind, x, slopes)  # noqa: E731
            if c.parallel_residual:  # both branches read the layer's input (spec/MATH.md, "Block")
                x_attn = [_naive_norm(c, p, f"{P}.attn_norm", v) for v in h]
                x_mlp = x_attn if c.shared_attn_norm else [_naive_norm(c, p, f"{P}.mlp_norm", v) for v in h]
                h = [v + a + ffn(c, p, P, y) for v, a, y in zip(h, attend(x_attn), x_mlp)]
                continue
            a = _wrapped(c, p, P, "attn", h, attend)
            h = [v + d for v, d in zip(h, a)]
            m = _wrapped(c, p, P, "mlp", h, lambda x, P=P, ffn=ffn: [ffn(c, p, P, v) for v in x])
            h = [v + d for v, d in zip(h, m)]
        w = p["embed.tokens"].T if c.tie_embeddings else p["lm_head.weight"]
        logits = [(_naive_norm(c, p, "final_norm", v) @ w + (p["lm_head.bias"] if c.lm_head_bias else 0.0))
                  * c.logit_scale for v in h]  # the scale before the softcap (spec/MATH.md, "Block")
        out.append([[_softcap(float(z), c.final_logit_softcap) for z in row] for row in logits])
    return np.array(out)
