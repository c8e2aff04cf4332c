"""LLaMA 1, 2, 3 and 3.1: one architecture whose versions differ in numbers that matter.

LLaMA 1 and 2 share everything but the context and the norm eps; LLaMA 3 brings RoPE theta
500000, GQA with 8 KV heads and a 128,256-token vocabulary; LLaMA 3.1 adds the "llama3"
RoPE frequency scaling for a 128K context.  All: pre-norm RMSNorm, SwiGLU, no biases,
untied head, RoPE in the rotate-half layout of the HF checkpoints.
"""

from lmref.spec.config import ModelConfig, RopeScaling
from lmref.spec.presets.preset import family

_LLAMA_7B = dict(
    hf_model_type="llama",
    vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, head_dim=128,
    d_ff=11008,
    position="rope", rope_theta=10_000.0, rope_layout="halves",
    norm="rmsnorm", mlp="gated", activation="silu",
)

_LLAMA3_8B = dict(
    hf_model_type="llama",
    vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, head_dim=128,
    d_ff=14336,
    position="rope", rope_theta=500_000.0, rope_layout="halves",
    norm="rmsnorm", norm_eps=1e-5, mlp="gated", activation="silu",
)

PRESETS = family(
    "llama",
    (ModelConfig(name="llama1", **_LLAMA_7B, max_seq_len=2048, norm_eps=1e-6),
     "LLaMA 1 7B: Touvron et al. 2023, Table 2 (d=4096, 32 heads, 32 layers, 2048 context); vocab 32000; "
     "Meta's params.json norm_eps 1e-6"),
    (ModelConfig(name="llama2", **_LLAMA_7B, max_seq_len=4096, norm_eps=1e-5),
     "Llama 2 7B: Touvron et al. 2023b; meta-llama/Llama-2-7b-hf config.json (max_position_embeddings 4096, "
     "rms_norm_eps 1e-5)"),
    (ModelConfig(name="llama2-70b", **(_LLAMA_7B | dict(d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                                                        d_ff=28672)),
                 max_seq_len=4096, norm_eps=1e-5),
     "Llama 2 70B: meta-llama/Llama-2-70b-hf config.json (d=8192, 80 layers, 64 heads, GQA with 8 KV heads, "
     "intermediate 28672)"),
    (ModelConfig(name="llama3", **_LLAMA3_8B, max_seq_len=8192),
     "Meta-Llama-3-8B config.json (theta 5e5, 8 KV heads, vocab 128256, context 8192)"),
    (ModelConfig(name="llama3.1", **_LLAMA3_8B, max_seq_len=131072,
                 rope_scaling=RopeScaling(kind="llama3", factor=8.0, low_freq_factor=1.0,
                                          high_freq_factor=4.0, original_max_seq_len=8192)),
     "Llama-3.1-8B config.json: rope_scaling {rope_type llama3, factor 8, low_freq_factor 1, "
     "high_freq_factor 4, original_max_position_embeddings 8192}, max_position_embeddings 131072"),
)
