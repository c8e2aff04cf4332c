"""OLMo 1 (Groeneveld et al. 2024) and the ALiBi variant this project's old code ran.

OLMo-1B numbers: allenai/OLMo-1B-hf config.json (d=2048, 16 layers, 16 heads, intermediate
8192, vocab 50304, context 2048, theta 1e4, tied embeddings, clip_qkv null), and
transformers' `OlmoLayerNorm`: non-parametric LayerNorm, eps hard-coded 1e-5.
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
    (ModelConfig(name="olmo-alibi", **_OLMO_1B, norm_weight=True, norm_bias=True, position="alibi"),
     "OLMo-1B geometry with the OLMo codebase's alibi=True option (Press et al. 2022) and an affine LayerNorm"),
)
