"""DBRX (Databricks 2024, "Introducing DBRX"): a fine-grained mixture of 16 experts, 4 chosen
per token, with GQA, RoPE, GLU experts and clipped q, k, v.

Norms are LayerNorms without a bias (transformers `DbrxBlock`: `nn.LayerNorm(bias=False)`,
eps 1e-5).  The router's weights are normalised by their L1 norm (`moe_normalize_expert_weights`
= 1), which for the positive softmax weights is the renormalisation.  `clip_qkv` clamps the
fused q | k | v projection (transformers `DbrxAttention`), the same clamp per part.
The load-balancing loss is MegaBlocks' (DBRX was trained with LLM Foundry and MegaBlocks, per
the announcement; `moe_loss_weight` 0.05 is MegaBlocks' argument): averaged per layer, not
pooled as transformers' `load_balancing_loss_func` pools it (spec/MATH.md, "MoE").
RoPE theta is 5e5 (`attn_config.rope_theta`; transformers 5.23 reads the top-level
`rope_parameters` instead, so the converter writes both, ../shared/reference/hf_measured.md).
"""

from lmref.spec.config import ModelConfig, MoEConfig
from lmref.spec.presets.preset import family

PRESETS = family(
    "dbrx",
    (ModelConfig(name="dbrx", hf_model_type="dbrx",
                 vocab_size=100352, d_model=6144, n_layers=40, n_heads=48, n_kv_heads=8, head_dim=128,
                 d_ff=10752, max_seq_len=32768, position="rope", rope_theta=500_000.0, rope_layout="halves",
                 norm="layernorm", norm_eps=1e-5, norm_bias=False, qkv_clip=8.0,
                 mlp="gated", activation="silu", mlp_pattern=("moe",),
                 moe=MoEConfig(n_experts=16, n_experts_per_token=4, aux_loss_coef=0.05, aux_loss="per_layer")),
     "DBRX: Databricks' announcement (132B parameters, 36B active, 16 experts, 4 chosen, 32K context); "
     "databricks/dbrx-base config.json (d_model 6144, n_layers 40, n_heads 48, attn_config kv_n_heads 8, "
     "clip_qkv 8, rope_theta 500000; ffn_config ffn_hidden_size 10752, moe_num_experts 16, moe_top_k 4, "
     "moe_loss_weight 0.05, moe_normalize_expert_weights 1, ffn_act_fn silu; vocab_size 100352, "
     "max_seq_len 32768, tie_word_embeddings false); the loss: databricks/megablocks layers/moe.py "
     "batched_load_balancing_loss"),
)
