"""GPT-2 (Radford et al. 2019).

Numbers: the `openai-community/gpt2` config.json, which equals transformers' `GPT2Config`
defaults (transformers `models/gpt2/configuration_gpt2.py`).
"""

from lmref.spec.config import ModelConfig
from lmref.spec.presets.preset import family

PRESETS = family(
    "gpt2",
    # gpt2 (124M): d=768, L=12, nH=12, V=50257, n_positions=1024, gelu_new (tanh), eps 1e-5,
    # learned absolute positions, Conv1D with biases everywhere, tied head.
    (ModelConfig(
        name="gpt2", hf_model_type="gpt2",
        vocab_size=50257, d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, head_dim=64,
        d_ff=3072, max_seq_len=1024,
        position="learned", tie_embeddings=True,
        norm="layernorm", norm_eps=1e-5, norm_bias=True,
        qkv_bias=True, attn_out_bias=True,
        mlp="plain", activation="gelu_tanh", mlp_bias=True,
    ), "Radford et al. 2019; openai-community/gpt2 config.json"),
)
