"""Qwen2 (Yang et al. 2024, "Qwen2 Technical Report"), Qwen2.5 (Qwen Team 2024, "Qwen2.5
Technical Report") and Qwen3 (Qwen Team 2025, "Qwen3 Technical Report"): LLaMA's block with
grouped-query attention and RoPE theta 1e6.

Qwen2 and Qwen2.5 put biases on q, k and v but not on the output projection (transformers
`Qwen2Attention`: `bias=True` on q_proj, k_proj, v_proj, `bias=False` on o_proj); their 7B
checkpoints have the same shape and numbers (Qwen2.5's report: the architecture is
Qwen2's).  The published configs set `use_sliding_window: false`, so no layer slides
(`Qwen2Config.__post_init__` drops the window) whatever `sliding_window` and
`max_window_layers` say.  Qwen3 drops the biases and normalises each query and key head with
an RMSNorm over head_dim before the RoPE (`Qwen3Attention`: q_norm, k_norm; the report's
"QK-Norm"), with head_dim 128 set apart from d_model / n_heads.
"""

from lmref.spec.config import ModelConfig
from lmref.spec.presets.preset import family

# Qwen/Qwen2-7B and Qwen/Qwen2.5-7B config.json: hidden_size 3584, 28 layers, 28 heads (head_dim
# 3584 / 28 = 128), 4 KV heads, intermediate_size 18944, vocab_size 152064,
# max_position_embeddings 131072, rope_theta 1e6, rms_norm_eps 1e-6, tie_word_embeddings false.
_QWEN2_7B = dict(
    hf_model_type="qwen2",
    vocab_size=152064, d_model=3584, n_layers=28, n_heads=28, n_kv_heads=4, head_dim=128, d_ff=18944,
    max_seq_len=131072, position="rope", rope_theta=1_000_000.0, rope_layout="halves",
    norm="rmsnorm", norm_eps=1e-6, qkv_bias=True, mlp="gated", activation="silu",
)

PRESETS = family(
    "qwen",
    (ModelConfig(name="qwen2-7b", **_QWEN2_7B),
     "Qwen2-7B: Yang et al. 2024, Table 1; Qwen/Qwen2-7B config.json (hidden_size 3584, 28 layers, 28 heads, "
     "4 KV heads, intermediate_size 18944, vocab_size 152064, max_position_embeddings 131072, rope_theta 1e6, "
     "rms_norm_eps 1e-6, tie_word_embeddings false, use_sliding_window false)"),
    (ModelConfig(name="qwen2.5-7b", **_QWEN2_7B),
     "Qwen2.5-7B: Qwen Team 2024 (Qwen2.5 report), Table 1; Qwen/Qwen2.5-7B config.json (the same numbers as "
     "Qwen2-7B: hidden_size 3584, 28 layers, 4 KV heads, intermediate_size 18944, vocab_size 152064, "
     "max_position_embeddings 131072, rope_theta 1e6, tie_word_embeddings false, use_sliding_window false)"),
    (ModelConfig(
        name="qwen3-8b", hf_model_type="qwen3",
        vocab_size=151936, d_model=4096, n_layers=36, n_heads=32, n_kv_heads=8, head_dim=128, d_ff=12288,
        max_seq_len=40960, position="rope", rope_theta=1_000_000.0, rope_layout="halves",
        norm="rmsnorm", norm_eps=1e-6, qk_norm="per_head", mlp="gated", activation="silu",
    ), "Qwen3-8B: Qwen Team 2025, Table 1 (36 layers, 32 query / 8 KV heads, QK-Norm); Qwen/Qwen3-8B config.json "
       "(hidden_size 4096, head_dim 128, intermediate_size 12288, vocab_size 151936, max_position_embeddings 40960, "
       "rope_theta 1e6, rms_norm_eps 1e-6, attention_bias false, tie_word_embeddings false, "
       "use_sliding_window false)"),
)
