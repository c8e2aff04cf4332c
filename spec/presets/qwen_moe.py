"""Qwen's mixtures of experts: Qwen1.5-MoE (Qwen Team 2024, "Qwen1.5-MoE"), Qwen2-57B-A14B
(Yang et al. 2024, "Qwen2 Technical Report", section 2.2.2) and Qwen3-30B-A3B (Qwen Team 2025,
"Qwen3 Technical Report").

Qwen1.5-MoE and Qwen2-MoE: softmax over all experts, the top-k weights not renormalised
(`norm_topk_prob: false`), plus one shared expert of its own width
(`shared_expert_intermediate_size`) scaled by a sigmoid gate (transformers
`Qwen2MoeSparseMoeBlock`); biases on q, k, v.  A layer is a mixture iff it is not in
`mlp_only_layers` and (i + 1) % `decoder_sparse_step` == 0: the published configs have no
`mlp_only_layers` and step 1, so every layer is.  Qwen3-MoE: 128 experts, top-8 renormalised
(`norm_topk_prob: true`), no shared expert, Qwen 3's per-head QK norm, no biases.
The dense `intermediate_size` of these configs is unused when every layer is a mixture.
"""

from lmref.spec.config import ModelConfig, MoEConfig
from lmref.spec.presets.preset import family

_QWEN_MOE = dict(
    vocab_size=151936, head_dim=128, position="rope", rope_theta=1_000_000.0, rope_layout="halves",
    norm="rmsnorm", norm_eps=1e-6, mlp="gated", activation="silu", mlp_pattern=("moe",),
)

PRESETS = family(
    "qwen_moe",
    (ModelConfig(name="qwen1.5-moe-a2.7b", hf_model_type="qwen2_moe", **_QWEN_MOE,
                 d_model=2048, n_layers=24, n_heads=16, n_kv_heads=16, d_ff=5632, max_seq_len=8192, qkv_bias=True,
                 moe=MoEConfig(n_experts=60, n_experts_per_token=4, d_ff=1408, renormalize=False,
                               n_shared_experts=1, shared_d_ff=5632, shared_expert_gate=True, aux_loss_coef=0.001)),
     "Qwen1.5-MoE-A2.7B: Qwen Team 2024 (14.3B parameters, 2.7B activated, 60 experts, 4 routed, shared experts); "
     "Qwen/Qwen1.5-MoE-A2.7B config.json (hidden_size 2048, 24 layers, 16 heads, 16 KV heads, intermediate_size "
     "5632, moe_intermediate_size 1408, shared_expert_intermediate_size 5632, num_experts 60, num_experts_per_tok 4, "
     "norm_topk_prob false, decoder_sparse_step 1, max_position_embeddings 8192, rope_theta 1e6, rms_norm_eps 1e-6, "
     "router_aux_loss_coef 0.001, tie_word_embeddings false)"),
    (ModelConfig(name="qwen2-57b-a14b", hf_model_type="qwen2_moe", **_QWEN_MOE,
                 d_model=3584, n_layers=28, n_heads=28, n_kv_heads=4, d_ff=18944, max_seq_len=131072, qkv_bias=True,
                 moe=MoEConfig(n_experts=64, n_experts_per_token=8, d_ff=2560, renormalize=False,
                               n_shared_experts=1, shared_d_ff=20480, shared_expert_gate=True, aux_loss_coef=0.001)),
     "Qwen2-57B-A14B: Yang et al. 2024, Table 1 (28 layers, hidden 3584, 28 query / 4 KV heads, 64 routed experts, "
     "8 activated, expert intermediate 2560, shared intermediate 20480; 57B parameters, 14B activated); "
     "Qwen/Qwen2-57B-A14B config.json (norm_topk_prob false, max_position_embeddings 131072, rope_theta 1e6, "
     "rms_norm_eps 1e-6, router_aux_loss_coef 0.001, use_sliding_window false)"),
    (ModelConfig(name="qwen3-30b-a3b", hf_model_type="qwen3_moe", **_QWEN_MOE,
                 d_model=2048, n_layers=48, n_heads=32, n_kv_heads=4, d_ff=6144, max_seq_len=40960, qk_norm="per_head",
                 moe=MoEConfig(n_experts=128, n_experts_per_token=8, d_ff=768, aux_loss_coef=0.001)),
     "Qwen3-30B-A3B: Qwen Team 2025, Table 2 (48 layers, 32 query / 4 KV heads, 128 experts, 8 activated; "
     "30.5B parameters, 3.3B activated); Qwen/Qwen3-30B-A3B config.json (hidden_size 2048, head_dim 128, "
     "moe_intermediate_size 768, norm_topk_prob true, max_position_embeddings 40960, rope_theta 1e6, "
     "rms_norm_eps 1e-6, router_aux_loss_coef 0.001, tie_word_embeddings false)"),
)
