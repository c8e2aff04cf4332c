"""MPT (MosaicML 2023, "Introducing MPT-7B: A New Standard for Open-Source, Commercially Usable LLMs").

Numbers: the mosaicml/mpt-7b config.json (d_model 4096, n_heads 32, n_layers 32, vocab_size
50432, max_seq_len 2048, expansion_ratio 4, no_bias true, attn_config.alibi true with
alibi_bias_max 8, norm_type low_precision_layernorm with eps 1e-5) and transformers'
`MptForCausalLM` (transformers `models/mpt/modeling_mpt.py`): LayerNorm weight without bias,
exact (erf) GELU, no biases anywhere, head tied to the token embedding.
"""

from lmref.spec.config import ModelConfig
from lmref.spec.presets.preset import family

PRESETS = family(
    "mpt",
    # mpt-7b: 6,649,286,656 parameters (the blog's "6.7B"); ALiBi instead of any position table.
    (ModelConfig(
        name="mpt", hf_model_type="mpt",
        vocab_size=50432, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, head_dim=128,
        d_ff=16384, max_seq_len=2048,
        position="alibi", alibi_max_bias=8.0, tie_embeddings=True,
        norm="layernorm", norm_eps=1e-5, norm_weight=True, norm_bias=False,
        mlp="plain", activation="gelu",
    ), "MosaicML 2023 (MPT-7B blog); mosaicml/mpt-7b config.json; transformers MptForCausalLM"),
)
