"""OLMoE (Muennighoff et al. 2024, "OLMoE: Open Mixture-of-Experts Language Models"): OLMo's
block with 64 SwiGLU experts, 8 chosen per token, softmax weights not renormalised
(`norm_topk_prob: false`), and a QK norm over the whole q and k projections (transformers
`OlmoeAttention`: `q_norm` of width d_model, `k_norm` of width n_kv_heads * head_dim, before
the RoPE).  The released config sets no `clip_qkv`; where one is set, the authors clamp before
the QK norm and transformers after it (the golden follows the authors, spec/MATH.md).
The auxiliary losses are the authors' (OLMoE's training config: `moe_loss_weight: 0.01`,
`moe_zloss_weight: 0.001`, computed by the `olmoe` branch of Muennighoff/megablocks that OLMoE
installs): MegaBlocks' per-layer load-balancing loss and a router z-loss, where transformers
pools the load-balancing loss and has no z-loss (spec/MATH.md, "MoE").
"""

from lmref.spec.config import ModelConfig, MoEConfig
from lmref.spec.presets.preset import family

PRESETS = family(
    "olmoe",
    (ModelConfig(name="olmoe-1b-7b", hf_model_type="olmoe",
                 vocab_size=50304, d_model=2048, n_layers=16, n_heads=16, n_kv_heads=16, head_dim=128, d_ff=1024,
                 max_seq_len=4096, position="rope", rope_theta=10_000.0, rope_layout="halves",
                 norm="rmsnorm", norm_eps=1e-5, qk_norm="per_projection", mlp="gated", activation="silu",
                 mlp_pattern=("moe",),
                 moe=MoEConfig(n_experts=64, n_experts_per_token=8, renormalize=False, aux_loss_coef=0.01,
                               aux_loss="per_layer", router_z_loss_coef=0.001)),
     "OLMoE-1B-7B-0924: Muennighoff et al. 2024, Table 1 (16 layers, d_model 2048, 16 heads, 64 experts, 8 active, "
     "6.9B parameters, 1.3B active, QK-Norm); allenai/OLMoE-1B-7B-0924 config.json (intermediate_size 1024, "
     "num_experts 64, num_experts_per_tok 8, norm_topk_prob false, vocab_size 50304, max_position_embeddings 4096, "
     "rope_theta 10000, rms_norm_eps 1e-5, clip_qkv null, router_aux_loss_coef 0.01, tie_word_embeddings false); "
     "the losses: allenai/OLMoE configs/OLMoE-1B-7B-0924.yml (moe_loss_weight 0.01, moe_zloss_weight 0.001) and "
     "Muennighoff/megablocks@olmoe layers/moe.py batched_load_balancing_loss"),
)
