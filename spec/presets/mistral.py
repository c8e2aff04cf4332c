"""Mistral 7B (Jiang et al. 2023, "Mistral 7B"): LLaMA's block with grouped-query attention
(32 query heads, 8 KV heads) and, in v0.1, a sliding window of 4096 keys on every layer.

The versions differ in numbers that matter, as LLaMA's do: v0.1 slides its attention window
(keys q - 4096 < k <= q, spec/MATH.md "Masks") with RoPE theta 1e4 and a 32,000-token
vocabulary; v0.3 attends to the whole context, with theta 1e6 and 32,768 tokens.  Both:
pre-norm RMSNorm (eps 1e-5), SwiGLU (d_ff 14336), no biases, untied head, rotate-half RoPE.
"""

from lmref.spec.config import ModelConfig
from lmref.spec.presets.preset import family

_MISTRAL_7B = dict(
    hf_model_type="mistral",
    d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, head_dim=128, d_ff=14336,
    max_seq_len=32768, position="rope", rope_layout="halves",
    norm="rmsnorm", norm_eps=1e-5, mlp="gated", activation="silu",
)

PRESETS = family(
    "mistral",
    # The paper's Table 1 gives the window (4096) and a context_len of 8192; the published
    # config.json lets positions run to 32768 (max_position_embeddings), which is the context
    # the model accepts, so it is ours.
    (ModelConfig(name="mistral-7b", **_MISTRAL_7B, vocab_size=32000, rope_theta=10_000.0,
                 attn_pattern=("sliding",), sliding_window=4096),
     "Mistral 7B v0.1: Jiang et al. 2023, Table 1 (dim 4096, 32 layers, head_dim 128, hidden_dim 14336, "
     "32 heads, 8 KV heads, window 4096, vocab 32000); mistralai/Mistral-7B-v0.1 config.json "
     "(sliding_window 4096, rope_theta 10000, rms_norm_eps 1e-5, max_position_embeddings 32768)"),
    (ModelConfig(name="mistral-7b-v0.3", **_MISTRAL_7B, vocab_size=32768, rope_theta=1_000_000.0),
     "Mistral 7B v0.3: mistralai/Mistral-7B-v0.3 config.json (vocab_size 32768, rope_theta 1e6, "
     "sliding_window null, rms_norm_eps 1e-5, max_position_embeddings 32768)"),
)
