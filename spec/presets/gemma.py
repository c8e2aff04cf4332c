"""Gemma (Gemma Team 2024, "Gemma: Open Models Based on Gemini Research and Technology"),
Gemma 2 (Gemma Team 2024, "Gemma 2: Improving Open Language Models at a Practical Size") and
the text model of Gemma 3 (Gemma Team 2025, "Gemma 3 Technical Report").

Every Gemma: embeddings scaled by sqrt(d_model), RMSNorm (eps 1e-6) that scales by (1 + w)
with w stored, GeGLU with the tanh GELU, RoPE, no biases, a head tied to the embedding, and
head_dim set apart from d_model / n_heads (spec/MATH.md; transformers `GemmaRMSNorm`,
`GemmaTextScaledWordEmbedding`, `GemmaMLP`; Google's `gemma` package).  Gemma 2 adds the
sandwich norms (a norm before and after each sublayer), sliding-window layers alternating
with global ones starting with a sliding one, an attention softcap of 50, a final logit
softcap of 30, and scores scaled by query_pre_attn_scalar^-0.5.  Gemma 3 drops the softcaps,
normalises each query and key head (QK norm, (1 + w) too), and runs five sliding layers for
each global one; its sliding layers rotate with theta 1e4, its global layers with theta 1e6
and linear scaling 8 (spec/MATH.md, "RoPE").
"""

from lmref.spec.config import ModelConfig, RopeScaling
from lmref.spec.presets.preset import family

_GEMMA = dict(
    vocab_size=256000, max_seq_len=8192, position="rope", rope_theta=10_000.0, rope_layout="halves",
    embedding_scale="sqrt_d_model", tie_embeddings=True,
    norm="rmsnorm", norm_eps=1e-6, norm_unit_offset=True, mlp="gated", activation="gelu_tanh",
)
# Gemma 2: both sizes alternate a 4096-key window with global layers, layer 0 sliding
# (Gemma2Config: layer_types[i] sliding iff (i + 1) % 2), and cap scores at 50, logits at 30.
# query_pre_attn_scalar: 9B's (and Gemma 3's) 256 is head_dim, the plain scale
# (query_scale_dim None); 27B's 144 = d_model / n_heads differs from its head_dim 128.
_GEMMA2 = _GEMMA | dict(
    hf_model_type="gemma2", norm_placement="sandwich",
    attn_pattern=("sliding", "global"), sliding_window=4096, attn_softcap=50.0, final_logit_softcap=30.0,
)

# Gemma 3: QK norm instead of the softcaps, five 1024-key sliding layers per global one, the sliding
# layers' RoPE at theta 1e4 unscaled, the global layers' at 1e6 scaled linearly by 8 (arch_dense.md,
# Gemma3RotaryEmbedding).  27B scales scores by query_pre_attn_scalar 168 = d_model / n_heads, not by its
# head_dim 128: with no softcap, the one preset whose SDPA call must be given the scale.
_GEMMA3 = _GEMMA | dict(
    hf_model_type="gemma3_text", vocab_size=262208, max_seq_len=131072, rope_theta=1_000_000.0,
    norm_placement="sandwich", qk_norm="per_head", attn_pattern=("sliding",) * 5 + ("global",), sliding_window=1024,
    rope_theta_local=10_000.0, rope_scaling=RopeScaling(kind="linear", factor=8.0),
)

PRESETS = family(
    "gemma",
    (ModelConfig(name="gemma-2b", hf_model_type="gemma", **_GEMMA,
                 d_model=2048, n_layers=18, n_heads=8, n_kv_heads=1, head_dim=256, d_ff=16384),
     "Gemma 2B: Gemma Team 2024, Table 1 (d_model 2048, 18 layers, feedforward 32768 = 2 x 16384, 8 heads, "
     "1 KV head, head size 256, vocab 256128 of which the released checkpoint holds 256000); google/gemma-2b "
     "config.json (hidden_size 2048, intermediate_size 16384, num_key_value_heads 1, head_dim 256, vocab_size "
     "256000, max_position_embeddings 8192, rms_norm_eps 1e-6, rope_theta 10000)"),
    (ModelConfig(name="gemma-7b", hf_model_type="gemma", **_GEMMA,
                 d_model=3072, n_layers=28, n_heads=16, n_kv_heads=16, head_dim=256, d_ff=24576),
     "Gemma 7B: Gemma Team 2024, Table 1 (d_model 3072, 28 layers, feedforward 49152 = 2 x 24576, 16 heads, "
     "16 KV heads, head size 256); google/gemma-7b config.json (hidden_size 3072, intermediate_size 24576, "
     "head_dim 256, vocab_size 256000, max_position_embeddings 8192, rms_norm_eps 1e-6, rope_theta 10000; "
     "hidden_act gelu, which transformers reads as gelu_pytorch_tanh)"),
    (ModelConfig(name="gemma2-9b", **_GEMMA2, d_model=3584, n_layers=42, n_heads=16, n_kv_heads=8, head_dim=256,
                 d_ff=14336),
     "Gemma 2 9B: Gemma Team 2024 (Gemma 2), Table 1 (d_model 3584, 42 layers, 16 heads, 8 KV heads, head size "
     "256, feedforward 28672 = 2 x 14336, window 4096, softcaps 50 / 30); google/gemma-2-9b config.json "
     "(query_pre_attn_scalar 256, sliding_window 4096, attn_logit_softcapping 50, final_logit_softcapping 30, "
     "max_position_embeddings 8192, rms_norm_eps 1e-6, rope_theta 10000)"),
    (ModelConfig(name="gemma2-27b", **_GEMMA2, d_model=4608, n_layers=46, n_heads=32, n_kv_heads=16, head_dim=128,
                 d_ff=36864, query_scale_dim=144),
     "Gemma 2 27B: Gemma Team 2024 (Gemma 2), Table 1 (d_model 4608, 46 layers, 32 heads, 16 KV heads, head "
     "size 128, feedforward 73728 = 2 x 36864); Google's gemma package scales 27B's queries "
     "BY_ONE_OVER_SQRT_EMBED_DIM_DIV_NUM_HEADS, (4608 / 32)^-0.5 = 144^-0.5; google/gemma-2-27b config.json (query_pre_attn_scalar 144, sliding_window 4096, softcaps "
     "50 / 30, max_position_embeddings 8192, rms_norm_eps 1e-6, rope_theta 10000)"),
    (ModelConfig(name="gemma3-4b", **_GEMMA3, d_model=2560, n_layers=34, n_heads=8, n_kv_heads=4, head_dim=256,
                 d_ff=10240),
     "Gemma 3 4B, text model: Gemma Team 2025, Table 1 and section 2 (5 local : 1 global layers, local window "
     "1024, local RoPE base 10k, global 1M with a scaling factor of 8, QK-norm instead of softcapping); "
     "google/gemma-3-4b-pt config.json text_config (hidden_size 2560, intermediate_size 10240, 34 layers, "
     "sliding_window 1024, rope_scaling {rope_type linear, factor 8}) over Gemma3TextConfig's defaults "
     "(8 heads, 4 KV heads, head_dim 256, vocab_size 262208, max_position_embeddings 131072, rope_theta 1e6, "
     "rope_local_base_freq 1e4, query_pre_attn_scalar 256, sliding_window_pattern 6, rms_norm_eps 1e-6)"),
    (ModelConfig(name="gemma3-27b", **_GEMMA3, d_model=5376, n_layers=62, n_heads=32, n_kv_heads=16, head_dim=128,
                 d_ff=21504, query_scale_dim=168),
     "Gemma 3 27B, text model: Gemma Team 2025, Table 1 (25,600M non-embedding parameters) and section 2; "
     "google/gemma-3-27b-pt config.json text_config (hidden_size 5376, intermediate_size 21504, 62 layers, 32 "
     "heads, 16 KV heads, head_dim 128, query_pre_attn_scalar 168 = 5376 / 32, sliding_window 1024, "
     "rope_scaling {rope_type linear, factor 8}) over Gemma3TextConfig's defaults as for 4B"),
)
