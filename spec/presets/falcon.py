"""Falcon (Almazrouei et al. 2023, "The Falcon Series of Open Language Models"): parallel
attention and MLP, RoPE over the whole head, no biases, exact GELU, a tied head.

    falcon-7b   h + attn(ln(h)) + mlp(ln(h))               one input_layernorm, multi-query (1 KV head)
    falcon-40b  h + attn(ln_attn(h)) + mlp(ln_mlp(h))      the "new decoder architecture":
                                                           two LayerNorms, 8 KV heads

(transformers `FalconDecoderLayer`: `parallel_attn`, `new_decoder_architecture`,
`num_ln_in_parallel_attn`).  The checkpoints fuse q, k and v (`query_key_value`): in the new
architecture per KV group (its query heads, then its k, then its v), in the old with
multi-query as all query heads, then k, then v; the converter splits both
(convert/models/falcon.py).  LayerNorms with biases, eps 1e-5; RoPE base 10000, halves layout.

Numbers: the config.json of tiiuae/falcon-7b and tiiuae/falcon-40b; 6,921,720,704 and
41,303,293,952 parameters in their tensors (transformers' FalconForCausalLM counts the same;
the paper's 7B and 40B).
"""

from lmref.spec.config import ModelConfig
from lmref.spec.presets.preset import family

_FALCON = dict(hf_model_type="falcon", vocab_size=65024, max_seq_len=2048, position="rope", rope_theta=10_000.0,
               rope_layout="halves", norm="layernorm", norm_eps=1e-5, norm_bias=True, mlp="plain", activation="gelu",
               tie_embeddings=True, parallel_residual=True)

PRESETS = family(
    "falcon",
    (ModelConfig(name="falcon-7b", d_model=4544, n_layers=32, n_heads=71, n_kv_heads=1, head_dim=64, d_ff=18176,
                 shared_attn_norm=True, **_FALCON),
     "Almazrouei et al. 2023; tiiuae/falcon-7b config.json (hidden_size 4544, 32 layers, 71 heads, multi_query "
     "true, parallel_attn true, new_decoder_architecture false, bias false, alibi false, vocab_size 65024, "
     "layer_norm_epsilon 1e-5)"),
    (ModelConfig(name="falcon-40b", d_model=8192, n_layers=60, n_heads=128, n_kv_heads=8, head_dim=64, d_ff=32768,
                 **_FALCON),
     "Almazrouei et al. 2023; tiiuae/falcon-40b config.json (hidden_size 8192, 60 layers, 128 heads, "
     "num_kv_heads 8, new_decoder_architecture true, parallel_attn true, bias false, alibi false, "
     "vocab_size 65024, layer_norm_epsilon 1e-5)"),
)
