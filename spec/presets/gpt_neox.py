"""GPT-NeoX-20B (Black et al. 2022) and Pythia (Biderman et al. 2023): parallel attention and
MLP, each on its own LayerNorm, rotary embeddings on the first quarter of each head's dims.

    h + attn(ln1(h)) + mlp(ln2(h))      use_parallel_residual (GPTNeoXLayer; the paper, section 2.1)

RoPE rotates dims [0, head_dim / 4) in the NeoX layout (the two halves of those dims paired,
`rotate_half`), with frequencies over that rotated width (transformers `rotary_pct` 0.25,
`rotary_emb_base` 10000); the other dims pass through.  q, k, v, the output projection and
the MLP have biases, the LayerNorms have weights and biases (eps 1e-5), and the head
(`embed_out`) is untied and has no bias.  Pythia's GELU is the exact one (`hidden_act: gelu`);
GPT-NeoX-20B's is the tanh one (`hidden_act: gelu_fast`, transformers' `FastGELUActivation`,
sqrt(2 / pi) written 0.7978845608: the tanh GELU to a few ulps; the fused bias-GELU of the
GPT-NeoX library, Megatron's, is the tanh formula too).  The checkpoints
fuse q, k and v per head (`query_key_value`: for each head, its q, k and v rows), which the
converter splits (convert/models/gpt_neox.py).

Numbers: the config.json of EleutherAI/pythia-160m, pythia-1.4b, pythia-6.9b and gpt-neox-20b;
total parameter counts as Pythia's table (Biderman et al. 2023, Table 1, and the model cards:
162,322,944; 1,414,647,808; 6,857,302,016) and GPT-NeoX-20B's (20,554,567,680, the paper's
Table 1 / the model card).
"""

from lmref.spec.config import ModelConfig
from lmref.spec.presets.preset import family

_NEOX = dict(hf_model_type="gpt_neox", max_seq_len=2048, position="rope", rope_theta=10_000.0, rope_layout="halves",
             rope_fraction=0.25, norm="layernorm", norm_eps=1e-5, norm_bias=True, qkv_bias=True, attn_out_bias=True,
             mlp="plain", activation="gelu", mlp_bias=True, parallel_residual=True)


def _neox(name: str, vocab_size: int, d_model: int, n_layers: int, n_heads: int, **changes) -> ModelConfig:
    return ModelConfig(name=name, vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                       n_kv_heads=n_heads, head_dim=d_model // n_heads, d_ff=4 * d_model, **(_NEOX | changes))


PRESETS = family(
    "gpt_neox",
    (_neox("pythia-160m", 50304, 768, 12, 12),
     "Biderman et al. 2023, Table 1; EleutherAI/pythia-160m config.json (hidden_size 768, 12 layers, 12 heads, "
     "intermediate_size 3072, vocab_size 50304, rotary_pct 0.25, rotary_emb_base 10000, use_parallel_residual "
     "true, hidden_act gelu, layer_norm_eps 1e-5, max_position_embeddings 2048, tie_word_embeddings false)"),
    (_neox("pythia-1.4b", 50304, 2048, 24, 16),
     "Biderman et al. 2023, Table 1; EleutherAI/pythia-1.4b config.json (hidden_size 2048, 24 layers, 16 heads, "
     "intermediate_size 8192, vocab_size 50304, rotary_pct 0.25)"),
    (_neox("pythia-6.9b", 50432, 4096, 32, 32),
     "Biderman et al. 2023, Table 1; EleutherAI/pythia-6.9b config.json (hidden_size 4096, 32 layers, 32 heads, "
     "intermediate_size 16384, vocab_size 50432, rotary_pct 0.25)"),
    (_neox("gpt-neox-20b", 50432, 6144, 44, 64, activation="gelu_tanh"),
     "Black et al. 2022, Table 1 and section 2.1; EleutherAI/gpt-neox-20b config.json (hidden_size 6144, "
     "44 layers, 64 heads, intermediate_size 24576, vocab_size 50432, rotary_pct 0.25, rotary_emb_base 10000, "
     "use_parallel_residual true, hidden_act gelu_fast, max_position_embeddings 2048)"),
)
