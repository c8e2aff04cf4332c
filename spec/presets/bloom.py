"""BLOOM (BigScience Workshop 2022, "BLOOM: A 176B-Parameter Open-Access Multilingual Language
Model", section 3.2, "ALiBi Positional Embeddings" and "Embedding LayerNorm"): a GPT-style pre-LayerNorm decoder with ALiBi instead of any position
table, and a LayerNorm right after the token embedding.

    h = ln_emb(embed.tokens[tokens])                    embedding_norm (word_embeddings_layernorm)
    h = h + attn(ln1(h));  h = h + mlp(ln2(h))          (BloomBlock, apply_residual_connection_post_layernorm false)
    logits = ln_f(h) @ embed.tokens^T                   tied head, no bias

ALiBi with the Press et al. slopes (`build_alibi_tensor`; the 176B's 112 heads are not a power
of two), multi-head attention with biases on q, k, v and the output, an MLP of width 4 d with
biases, every LayerNorm with weight and bias (eps 1e-5), and the tanh GELU with sqrt(2/pi)
written 0.79788456 (Megatron-DeepSpeed's fused `bias_gelu`, transformers' `bloom_gelu_forward`;
spec/MATH.md).  The checkpoints fuse q, k and v per head (`query_key_value`, viewed
[..., n_head, 3, head_dim]), which the converter splits (convert/models/bloom.py).  The trained
context is 2048 tokens (the model cards' "sequence length"; no field of BloomConfig holds it).
The embedding has 250880 rows: the tokenizer's 250,680 padded.

Numbers: the config.json of bigscience/bloom-560m, bloom-7b1 and bloom (hidden_size / n_embed,
n_layer, n_head / num_attention_heads, vocab_size 250880, layer_norm_epsilon 1e-5); the
parameter counts are the model cards' (559,214,592; 7,069,016,064; 176,247,271,424), which are
exactly the checkpoints' tensors: tokens V d, embedding LayerNorm 2 d, per layer 12 d^2 + 13 d,
final LayerNorm 2 d.
"""

from lmref.spec.config import ModelConfig
from lmref.spec.presets.preset import family

_BLOOM = dict(hf_model_type="bloom", vocab_size=250880, max_seq_len=2048, position="alibi", alibi_max_bias=8.0,
              embedding_norm=True, tie_embeddings=True, norm="layernorm", norm_eps=1e-5, norm_bias=True,
              qkv_bias=True, attn_out_bias=True, mlp="plain", activation="gelu_tanh_truncated", mlp_bias=True)


def _bloom(name: str, d_model: int, n_layers: int, n_heads: int) -> ModelConfig:
    return ModelConfig(name=name, d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_heads,
                       head_dim=d_model // n_heads, d_ff=4 * d_model, **_BLOOM)


PRESETS = family(
    "bloom",
    (_bloom("bloom-560m", 1024, 24, 16),
     "BigScience Workshop 2022, section 3.2; bigscience/bloom-560m config.json (hidden_size 1024, n_layer 24, "
     "n_head 16, vocab_size 250880, layer_norm_epsilon 1e-5); model card: 559,214,592 parameters"),
    (_bloom("bloom-7b1", 4096, 30, 32),
     "BigScience Workshop 2022, section 3.2; bigscience/bloom-7b1 config.json (hidden_size 4096, n_layer 30, "
     "n_head 32, vocab_size 250880); model card: 7,069,016,064 parameters"),
    (_bloom("bloom-176b", 14336, 70, 112),
     "BigScience Workshop 2022, section 3.2; bigscience/bloom config.json (n_embed 14336, n_layer 70, "
     "num_attention_heads 112, vocab_size 250880); model card: 176,247,271,424 parameters"),
)
