"""Mixtral (Jiang et al. 2024, "Mixtral of Experts"): Mistral's block with every MLP replaced
by 8 SwiGLU experts, 2 chosen per token.

The router takes a softmax over all 8 experts, keeps the 2 largest and renormalises them
(transformers `MixtralTopKRouter`; the paper's eq. 1 writes softmax(top-2(logits)), the same
weights).  Every layer is a mixture, no shared expert, no biases, untied head.

Sliding window: the first config.json of Mixtral-8x7B-v0.1 carried `"sliding_window": 4096`
from Mistral 7B; it was changed to null, and the paper (section 2) gives a "fully dense
context length of 32k tokens".  mistral-inference's params.json for Mixtral has no window.
The published model attends to its whole context, so the preset has no window.
"""

from lmref.spec.config import ModelConfig, MoEConfig
from lmref.spec.presets.preset import family

_MIXTRAL = dict(
    hf_model_type="mixtral", vocab_size=32000, head_dim=128, n_kv_heads=8, position="rope",
    rope_theta=1_000_000.0, rope_layout="halves", norm="rmsnorm", norm_eps=1e-5,
    mlp="gated", activation="silu", mlp_pattern=("moe",),
)

PRESETS = family(
    "mixtral",
    (ModelConfig(name="mixtral-8x7b", **_MIXTRAL, d_model=4096, n_layers=32, n_heads=32, d_ff=14336,
                 max_seq_len=32768, moe=MoEConfig(n_experts=8, n_experts_per_token=2, aux_loss_coef=0.02)),
     "Mixtral-8x7B-v0.1: Jiang et al. 2024, Table 1 (dim 4096, 32 layers, head_dim 128, hidden_dim 14336, "
     "32 heads, 8 KV heads, context 32768, vocab 32000, 8 experts, top-2); 46.7B parameters, 12.9B active "
     "(section 2.1); mistralai/Mixtral-8x7B-v0.1 config.json (rope_theta 1e6, rms_norm_eps 1e-5, "
     "sliding_window null, router_aux_loss_coef 0.02, tie_word_embeddings false)"),
    (ModelConfig(name="mixtral-8x22b", **_MIXTRAL, d_model=6144, n_layers=56, n_heads=48, d_ff=16384,
                 max_seq_len=65536, moe=MoEConfig(n_experts=8, n_experts_per_token=2, aux_loss_coef=0.001)),
     "Mixtral-8x22B-v0.1: Mistral AI's announcement (141B parameters, 39B active, 64K context); "
     "mistralai/Mixtral-8x22B-v0.1 config.json (hidden_size 6144, 56 layers, 48 heads, 8 KV heads, "
     "intermediate_size 16384, max_position_embeddings 65536, rope_theta 1e6, rms_norm_eps 1e-5, "
     "vocab_size 32000, router_aux_loss_coef 0.001, sliding_window null)"),
)
