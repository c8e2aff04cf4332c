"""GPT-J-6B (Wang & Komatsuzaki 2021, mesh-transformer-jax): attention and MLP in parallel on
one shared LayerNorm, rotary embeddings on the first 64 of each head's 256 dims with
interleaved pairs.

    h + attn(ln_1(h)) + mlp(ln_1(h))    transformers `GPTJBlock` (one `ln_1`)

RoPE pairs dims (2i, 2i + 1) of dims [0, 64) (`rotate_every_two`, the layout of
mesh-transformer-jax), with frequencies over those 64 dims (`rotary_dim` 64, base 10000);
dims [64, 256) pass through.  q, k, v and the output projection have no biases, the MLP
(`fc_in`, `fc_out`) and the head (`lm_head`, untied) do; the GELU is the tanh one
(`activation_function: gelu_new`); LayerNorms with biases, eps 1e-5.

Numbers: EleutherAI/gpt-j-6b config.json.  Its tensors hold 6,050,882,784 parameters (so does
transformers' GPTJForCausalLM); the model card's 6,053,381,344 is 2,498,560 = 610 x 4096 more,
which no tensor of the checkpoint accounts for (tests/test_presets.py).
"""

from lmref.spec.config import ModelConfig
from lmref.spec.presets.preset import family

PRESETS = family(
    "gptj",
    (ModelConfig(name="gptj-6b", hf_model_type="gptj",
                 vocab_size=50400, d_model=4096, n_layers=28, n_heads=16, n_kv_heads=16, head_dim=256, d_ff=16384,
                 max_seq_len=2048, position="rope", rope_theta=10_000.0, rope_layout="interleaved",
                 rope_fraction=0.25, norm="layernorm", norm_eps=1e-5, norm_bias=True, mlp="plain",
                 activation="gelu_tanh", mlp_bias=True, lm_head_bias=True, parallel_residual=True,
                 shared_attn_norm=True),
     "Wang & Komatsuzaki 2021; EleutherAI/gpt-j-6b config.json (n_embd 4096, n_layer 28, n_head 16, rotary_dim 64, "
     "n_inner null (4 x n_embd), vocab_size 50400, n_positions 2048, activation_function gelu_new, "
     "layer_norm_epsilon 1e-5, tie_word_embeddings false); 6,050,882,784 parameters in its tensors"),
)
