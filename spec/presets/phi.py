"""Phi-1.5 (Li et al. 2023, "Textbooks Are All You Need II") and Phi-2 (Microsoft 2023):
attention and MLP in parallel on one shared LayerNorm, partial RoPE, biases everywhere,
the head's included.

    h + attn(ln(h)) + mlp(ln(h))        transformers `PhiDecoderLayer` (one input_layernorm)

RoPE rotates the first half (Phi-1.5: 32 of 64) or 0.4 (Phi-2: 32 of 80) of each head's dims
in the halves layout (`partial_rotary_factor`, `rotate_half`), base 10000.  q, k, v, the
output projection (`dense`), the MLP (`fc1`, `fc2`) and the untied head have biases; the GELU
is the tanh one (`hidden_act: gelu_new`); LayerNorms with biases, eps 1e-5.

Numbers: the config.json of microsoft/phi-1_5 and microsoft/phi-2 (model cards: 1.3B and
2.7B parameters; the tensors hold 1,418,270,720 and 2,779,683,840).
"""

from lmref.spec.config import ModelConfig
from lmref.spec.presets.preset import family

_PHI = dict(hf_model_type="phi", vocab_size=51200, n_heads=32, max_seq_len=2048, position="rope",
            rope_theta=10_000.0, rope_layout="halves", norm="layernorm", norm_eps=1e-5, norm_bias=True,
            qkv_bias=True, attn_out_bias=True, mlp="plain", activation="gelu_tanh", mlp_bias=True,
            lm_head_bias=True, parallel_residual=True, shared_attn_norm=True)

PRESETS = family(
    "phi",
    (ModelConfig(name="phi-1.5", d_model=2048, n_layers=24, n_kv_heads=32, head_dim=64, d_ff=8192,
                 rope_fraction=0.5, **_PHI),
     "Li et al. 2023; microsoft/phi-1_5 config.json (hidden_size 2048, 24 layers, 32 heads, intermediate_size "
     "8192, partial_rotary_factor 0.5, vocab_size 51200, hidden_act gelu_new, layer_norm_eps 1e-5, "
     "max_position_embeddings 2048, tie_word_embeddings false)"),
    (ModelConfig(name="phi-2", d_model=2560, n_layers=32, n_kv_heads=32, head_dim=80, d_ff=10240,
                 rope_fraction=0.4, **_PHI),
     "microsoft/phi-2 config.json (hidden_size 2560, 32 layers, 32 heads, intermediate_size 10240, "
     "partial_rotary_factor 0.4, vocab_size 51200, hidden_act gelu_new, layer_norm_eps 1e-5, "
     "max_position_embeddings 2048, tie_word_embeddings false)"),
)
