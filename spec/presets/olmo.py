"""OLMo 1 (Groeneveld et al. 2024), the ALiBi variant this project's old code ran, and OLMo 2
(OLMo et al. 2024, "2 OLMo 2 Furious").

OLMo-1B numbers: allenai/OLMo-1B-hf config.json (d=2048, 16 layers, 16 heads, intermediate
8192, vocab 50304, context 2048, theta 1e4, tied embeddings, clip_qkv null), and
transformers' `OlmoLayerNorm`: non-parametric LayerNorm, eps hard-coded 1e-5.

OLMo 2 reorders the block (section 3.1: the norm on each sublayer's output, none on its
input: `norm_placement="post_sublayer"`), normalises the whole q and k projections with an
RMSNorm ("QK-norm", `qk_norm="per_projection"`) and swaps LayerNorm for RMSNorm
(transformers `Olmo2DecoderLayer`, `Olmo2Attention`).
"""

from lmref.spec.config import ModelConfig
from lmref.spec.presets.preset import family

_OLMO_1B = dict(
    vocab_size=50304, d_model=2048, n_layers=16, n_heads=16, n_kv_heads=16, head_dim=128,
    d_ff=8192, max_seq_len=2048, tie_embeddings=True,
    norm="layernorm", norm_eps=1e-5, mlp="gated", activation="silu",
)

PRESETS = family(
    "olmo",
    (ModelConfig(name="olmo", hf_model_type="olmo", **_OLMO_1B, norm_weight=False, position="rope",
                 rope_theta=10_000.0),
     "Groeneveld et al. 2024; allenai/OLMo-1B-hf config.json; transformers OlmoLayerNorm (eps 1e-5, no affine)"),
    # There is no published checkpoint and no transformers class (hf_model_type None); its
    # size is OLMo-1B's plus the LayerNorm affines.
    # The OLMo code's ALiBi (olmo/model.py `alibi_attention_bias`) gives head h of n the slope
    # 2^(-alibi_bias_max * h / n) for every n: not Press et al.'s rule for other head counts.
    (ModelConfig(name="olmo-alibi", **_OLMO_1B, norm_weight=True, norm_bias=True, position="alibi",
                 alibi_slopes="geometric"),
     "Groeneveld et al. 2024 (OLMo-1B geometry) with the OLMo codebase's alibi=True option (olmo/model.py "
     "alibi_attention_bias: slopes 2^(-8h/n) for every head count) and an affine LayerNorm"),
    (ModelConfig(
        name="olmo2-7b", hf_model_type="olmo2",
        vocab_size=100352, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, head_dim=128, d_ff=11008,
        max_seq_len=4096, position="rope", rope_theta=500_000.0, rope_layout="halves",
        norm="rmsnorm", norm_eps=1e-6, norm_placement="post_sublayer", qk_norm="per_projection",
        mlp="gated", activation="silu",
    ), "OLMo 2 7B: OLMo et al. 2024, section 3.1 (reordered norm, QK-norm, RMSNorm, RoPE theta 5e5); "
       "allenai/OLMo-2-1124-7B config.json (hidden_size 4096, 32 layers, 32 heads, 32 KV heads, intermediate_size "
       "11008, vocab_size 100352, max_position_embeddings 4096, rope_theta 500000, rms_norm_eps 1e-6, "
       "attention_bias false, tie_word_embeddings false)"),
)
