"""Llama 4 text models (Meta 2025, "The Llama 4 herd"; Meta's llama-models, models/llama4/):
Scout (16 experts) and Maverick (128 experts), each token routed to 1 expert plus a shared one.

- iRoPE: every fourth layer (`(i + 1) % 4 == 0`, llama-models `nope_layer_interval`) has no
  RoPE and attends causally to the whole context, with the query temperature
  log(floor((p + 1) / 8192) + 1) * 0.1 + 1 (`attn_temperature_tuning`, `floor_scale`,
  `attn_scale`); the RoPE layers attend within chunks of 8192 tokens (`attention_chunk_size`).
- RoPE on interleaved pairs (llama-models `apply_rotary_emb`: `view_as_complex` of (2i, 2i+1);
  transformers' converter keeps the weights unpermuted), theta 5e5.  "Only Llama-4-Scout uses
  scaled rope" (llama-models `ModelArgs.validate`): llama3 scaling with factor 16, low and high
  frequency factors 1 and an original context of 8192, so no band is smoothed.
- Scout normalises q and k after the RoPE on the RoPE layers with a weightless RMSNorm
  (`use_qk_norm`; "l2" here, transformers `Llama4TextL2Norm`); Maverick does not.
- The router takes the top-1 raw logit, and its sigmoid scales the expert's input
  (llama-models `MoE`, transformers `Llama4TextMoe`); a shared SwiGLU expert of the experts'
  width (8192) is always added, ungated.  Scout's every layer is a mixture; Maverick alternates
  dense layers (width 16384, `intermediate_size_mlp`) and mixtures (`interleave_moe_layer_step`
  2: layers 1, 3, 5, ...).  No auxiliary loss in the released code.
"""

from lmref.spec.config import ModelConfig, MoEConfig, RopeScaling
from lmref.spec.presets.preset import family

_LLAMA4 = dict(
    hf_model_type="llama4_text", vocab_size=202048, d_model=5120, n_layers=48, n_heads=40, n_kv_heads=8,
    head_dim=128, d_ff=16384, position="rope", rope_theta=500_000.0, rope_layout="interleaved",
    norm="rmsnorm", norm_eps=1e-5, mlp="gated", activation="silu",
    attn_pattern=("chunked", "chunked", "chunked", "global_nope"), attn_chunk_size=8192,
    attn_temperature_floor=8192, attn_temperature_scale=0.1,
)


def _experts(n: int) -> MoEConfig:
    return MoEConfig(n_experts=n, n_experts_per_token=1, router="sigmoid_topk", d_ff=8192,
                     router_scales_input=True, renormalize=False, n_shared_experts=1)


PRESETS = family(
    "llama4",
    (ModelConfig(name="llama4-scout", **_LLAMA4, max_seq_len=262144, qk_norm="l2",
                 rope_scaling=RopeScaling(kind="llama3", factor=16.0, original_max_seq_len=8192,
                                          low_freq_factor=1.0, high_freq_factor=1.0),
                 mlp_pattern=("moe",), moe=_experts(16)),
     "Llama-4-Scout-17B-16E: Meta's Llama 4 announcement (17B active, 109B total with the vision encoder, "
     "16 experts); meta-llama/Llama-4-Scout-17B-16E config.json text_config (hidden_size 5120, 48 layers, 40 heads, "
     "8 KV heads, head_dim 128, intermediate_size 8192, intermediate_size_mlp 16384, num_local_experts 16, "
     "num_experts_per_tok 1, interleave_moe_layer_step 1, vocab_size 202048, rope_theta 500000, rms_norm_eps 1e-5, "
     "attention_chunk_size 8192, use_qk_norm true, floor_scale 8192, attn_scale 0.1); llama-models "
     "models/llama4/args.py (Scout's scaled RoPE: factor 16, high_freq_factor 1; apply_scaling: low 1, context 8192); "
     "max_position_embeddings 262144 as transformers' convert_llama4_weights_to_hf.py gives the base model"),
    (ModelConfig(name="llama4-maverick", **_LLAMA4, max_seq_len=1048576,
                 mlp_pattern=("dense", "moe"), moe=_experts(128)),
     "Llama-4-Maverick-17B-128E: Meta's Llama 4 announcement (17B active, 400B total, 128 experts, 1M context); "
     "meta-llama/Llama-4-Maverick-17B-128E config.json text_config (as Scout, but num_local_experts 128, "
     "interleave_moe_layer_step 2, use_qk_norm false, rope_scaling null, max_position_embeddings 1048576); "
     "llama-models models/llama4/args.py ('Only Llama-4-Scout uses scaled rope')"),
)
