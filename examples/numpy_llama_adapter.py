"""A third-party LLaMA written from scratch in float32 NumPy, plugged into lmref's suite.

    pytest conformance/ --arch llama --impl examples.numpy_llama_adapter:LlamaAdapter

The adapter maps lmref's canonical parameters (spec/params.py: `x @ W`, W [d_in, d_out])
to this implementation and declares what it supports: forward and loss, no KV cache
(decode is then reported NOT SUPPORTED, never passed).
"""

import numpy as np


def rms_norm(x, weight, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def rope(x, theta):  # x: [B, S, heads, hd], rotate-half pairs (i, i + hd/2)
    hd = x.shape[-1]
    inv_freq = theta ** (-np.arange(0, hd, 2, dtype=np.float32) / hd)
    angles = np.arange(x.shape[1], dtype=np.float32)[:, None] * inv_freq  # [S, hd/2]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]  # [S, 1, hd/2]
    a, b = x[..., : hd // 2], x[..., hd // 2 :]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def attention(x, wq, wk, wv, wo, n_heads, n_kv_heads, theta):
    B, S, _ = x.shape
    q = (x @ wq).reshape(B, S, n_heads, -1)  # [B, S, H, hd]
    k = (x @ wk).reshape(B, S, n_kv_heads, -1)  # [B, S, K, hd]
    v = (x @ wv).reshape(B, S, n_kv_heads, -1)
    q, k = rope(q, theta), rope(k, theta)
    group = n_heads // n_kv_heads  # query head h reads kv head h // group
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)  # [B, S, H, hd]
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(np.float32(q.shape[-1]))
    scores = np.where(np.tril(np.ones((S, S), dtype=bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, S, -1) @ wo


def llama_forward(p, tokens, n_layers, n_heads, n_kv_heads, theta, eps):
    h = p["embed.tokens"][tokens]
    for i in range(n_layers):
        L = f"layers.{i}."
        h = h + attention(rms_norm(h, p[L + "attn_norm.weight"], eps), p[L + "attn.wq"], p[L + "attn.wk"],
                          p[L + "attn.wv"], p[L + "attn.wo"], n_heads, n_kv_heads, theta)
        x = rms_norm(h, p[L + "mlp_norm.weight"], eps)
        gate = x @ p[L + "mlp.w_gate"]
        h = h + (gate / (1 + np.exp(-gate)) * (x @ p[L + "mlp.w_up"])) @ p[L + "mlp.w_down"]
    return rms_norm(h, p["final_norm.weight"], eps) @ p["lm_head.weight"]


class LlamaAdapter:
    name = "numpy-llama-example"
    version = "1.0"
    dtype = "float32"  # judged by the float32 tolerance row

    def forward(self, config, params, tokens):
        if config.rope_scaling is not None or config.position != "rope" or config.norm != "rmsnorm":
            raise NotImplementedError(f"this example implements plain LLaMA, not {config.name}")
        p = {name: value.astype(np.float32) for name, value in params.items()}
        return llama_forward(p, tokens, config.n_layers, config.n_heads, config.n_kv_heads,
                             np.float32(config.rope_theta), np.float32(config.norm_eps))

    def loss(self, config, params, tokens):
        logits = self.forward(config, params, tokens[:, :-1]).astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        return float(-np.take_along_axis(logp, tokens[:, 1:, None], -1).mean())
