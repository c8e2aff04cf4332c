"""PaLM (Chowdhery et al. 2022, "PaLM: Scaling Language Modeling with Pathways"): attention and
MLP in parallel on one shared LayerNorm, SwiGLU, multi-query attention, RoPE, no biases,
input and output embeddings shared, logits scaled by d_model^-0.5, and a z-loss on the
softmax normaliser in the training loss.  transformers has no PaLM class (hf_model_type None).

    h + attn(ln(h)) + mlp(ln(h))          section 2, "Parallel Layers": y = x + MLP(LN(x)) + Attention(LN(x))
    logits = (ln_f(h) @ E^T) * d^-0.5     section 5, "Weight initialization": "we scale the pre-softmax
                                          output logits by 1/sqrt(n), where n is the embedding size"
    loss = ce + 1e-4 * mean log^2 Z       section 5, "Loss function" (t5x losses.py computes the same)

Section 2: SwiGLU (`Swish(xW) * xV`), d_ff = 4 d_model; multi-query attention (one key/value
head of size 256); RoPE; shared input-output embeddings; "No biases were used in any of the
dense kernels or layer norms" (LayerNorm with a scale and no bias); a 256k SentencePiece
vocabulary.  Table 1: 8B 32 layers, 16 heads, d_model 4096; 62B 64 layers, 32 heads, 8192;
540B 118 layers, 48 heads, 18432; head size 256 for all three (so 540B's queries are 48 x 256
= 12288 wide, apart from d_model).  Sequence length 2048 (section 5).

What the paper leaves open, settled with Google's code (PaLM was trained with JAX and T5X,
section 4; no PaLM weights were released, so no checkpoint decides):
- LayerNorm eps 1e-6: the default of praxis `LayerNorm` (praxis/layers/normalizations.py),
  of flax `nn.LayerNorm` and of t5x's example layers.  (lucidrains/PaLM-pytorch, an
  unofficial port, uses torch's 1e-5.)  praxis stores its scale as (1 + w); lmref stores w
  itself, the same function, and with no released weights the stored form is unobservable.
- RoPE on halves, base 10000: praxis `RotaryPositionalEmbedding` (praxis/layers/
  embedding_softmax.py: `first_half, second_half = jnp.split(inputs, 2, axis=-1)`, timescale
  `max_timescale**(2i/d)` with max_timescale 10000); lucidrains/PaLM-pytorch agrees
  (`rotate_half` on two halves, `10000 ** (arange(0, dim, 2) / dim)`).

Counts (tests/test_presets.py), the tied table counted once, one LayerNorm scale per layer and
a final one: 8,632,012,800, 62,495,662,080 and 540,356,474,880, Table 1's 8.63B and 62.50B;
540.35B is the 540B count without its 119 LayerNorm scales (2,193,408 parameters), which
rounds to 540.36B with them.  The scales stay: section 2 removes the biases of the layer
norms, not their scales, and praxis' LayerNorm has one.
"""

from lmref.spec.config import ModelConfig
from lmref.spec.presets.preset import family

_PALM = dict(hf_model_type=None, vocab_size=256_000, n_kv_heads=1, head_dim=256, max_seq_len=2048,
             position="rope", rope_theta=10_000.0, rope_layout="halves", norm="layernorm", norm_eps=1e-6,
             mlp="gated", activation="silu", tie_embeddings=True, parallel_residual=True, shared_attn_norm=True,
             logit_z_loss_coef=1e-4)

_SOURCE = ("Chowdhery et al. 2022, Table 1 ({}) and sections 2 and 5 (parallel layers on one LayerNorm, "
           "SwiGLU with d_ff 4 d_model, multi-query, RoPE, no biases, shared embeddings, vocabulary 256k, "
           "logits scaled by d_model^-0.5, z-loss 1e-4, sequence length 2048)")


def _palm(name: str, d_model: int, n_layers: int, n_heads: int) -> ModelConfig:
    return ModelConfig(name=name, d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_ff=4 * d_model,
                       logit_scale=d_model**-0.5, **_PALM)


PRESETS = family(
    "palm",
    (_palm("palm-8b", 4096, 32, 16), _SOURCE.format("8B: 32 layers, 16 heads of 256, d_model 4096, 8.63B")),
    (_palm("palm-62b", 8192, 64, 32), _SOURCE.format("62B: 64 layers, 32 heads of 256, d_model 8192, 62.50B")),
    (_palm("palm-540b", 18432, 118, 48),
     _SOURCE.format("540B: 118 layers, 48 heads of 256, d_model 18432, 540.35B without the LayerNorm scales")),
)
