"""Phi-3-mini (Abdin et al. 2024, "Phi-3 Technical Report"): LLaMA's block (pre-norm RMSNorm eps
1e-5, SwiGLU, no biases, untied head, rotate-half RoPE base 10000) at d_model 3072, 32 layers, 32
heads of 96 dims (MHA), d_ff 8192, vocabulary 32064.  The checkpoints fuse q|k|v and gate|up
(convert/models/phi3.py); the math is LLaMA's.

- phi-3-mini-4k: a sliding window of 2047 keys on every layer (config.json `sliding_window`
  2047; transformers `Phi3Model` builds `create_sliding_window_causal_mask` with it, keys
  q - 2047 < k <= q: lmref's W = 2047, spec/MATH.md "Masks").
- phi-3-mini-128k: LongRoPE (spec/MATH.md, "LongRoPE") over the original context 4096, 48 short
  and 48 long factors (one per rotated pair of the 96 dims), factor 131072 / 4096 = 32, so the
  attention factor sqrt(1 + ln 32 / ln 4096) = 1.19024.  Its config.json says sliding_window
  262144, a window that never cuts inside the 131072-token context (transformers' sliding mask
  with it is the causal mask): no window (convert/models/phi3.py reads it so).

Numbers: microsoft/Phi-3-mini-4k-instruct and microsoft/Phi-3-mini-128k-instruct config.json
(tests/hf_real_configs/).  The factor lists are the 128k model's config.json on the Hub's main
branch (its July 2024 update; the April release had others), as Microsoft's own code quotes
them (an evaluation script's LONGROPE_PARAMS, "Copyright (c) Microsoft Corporation"), checked
against the Hub page's first 31 long factors and a copy of the file's first and last entries.
Parameter count 3,821,079,552 for both (keras-hub's phi3 presets; the tensors' sum).
"""

from lmref.spec.config import ModelConfig, RopeScaling
from lmref.spec.presets.preset import family

# microsoft/Phi-3-mini-128k-instruct config.json rope_scaling (type "longrope"), pairs 0 .. 47
SHORT_FACTOR = (
    1.1, 1.1, 1.1, 1.3000000000000003, 1.3500000000000003, 1.3500000000000003, 1.4000000000000004,
    1.5500000000000005, 2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001,
    2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001,
    2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001,
    2.000000000000001, 2.000000000000001, 2.000000000000001, 2.0500000000000007, 2.0500000000000007,
    2.0500000000000007, 2.0500000000000007, 2.0500000000000007, 2.0500000000000007, 2.1000000000000005,
    2.1000000000000005, 2.1500000000000004, 2.25, 2.25, 2.25, 2.25, 2.25, 2.3999999999999995,
    2.4499999999999993, 2.499999999999999, 2.6999999999999984, 2.6999999999999984, 2.7499999999999982,
    2.799999999999998, 2.8999999999999977, 3.049999999999997,
)
LONG_FACTOR = (
    1.0700000524520874, 1.1200000047683716, 1.149999976158142, 1.4199999570846558, 1.5699999332427979,
    1.7999999523162842, 2.129999876022339, 2.129999876022339, 3.009999990463257, 5.910000324249268,
    6.950000286102295, 9.070000648498535, 9.930000305175781, 10.710000038146973, 11.130000114440918,
    14.609999656677246, 15.409998893737793, 19.809999465942383, 37.279998779296875, 38.279998779296875,
    38.599998474121094, 40.12000274658203, 46.20000457763672, 50.940006256103516, 53.66000747680664,
    54.9373893737793, 56.89738845825195, 57.28738784790039, 59.98738479614258, 60.86738586425781,
    60.887386322021484, 61.71739196777344, 62.91739273071289, 62.957393646240234, 63.41739273071289,
    63.8173942565918, 63.83739471435547, 63.897396087646484, 63.93739700317383, 64.06739807128906,
    64.11434936523438, 64.12435150146484, 64.15435028076172, 64.19435119628906, 64.24435424804688,
    64.57435607910156, 64.69000244140625, 64.76000213623047,
)

_PHI3_MINI = dict(
    hf_model_type="phi3", vocab_size=32064, d_model=3072, n_layers=32, n_heads=32, n_kv_heads=32, head_dim=96,
    d_ff=8192, position="rope", rope_theta=10_000.0, rope_layout="halves", norm="rmsnorm", norm_eps=1e-5,
    mlp="gated", activation="silu",
)

PRESETS = family(
    "phi3",
    (ModelConfig(name="phi-3-mini-4k", max_seq_len=4096, attn_pattern=("sliding",), sliding_window=2047, **_PHI3_MINI),
     "Abdin et al. 2024 (phi-3-mini: 3072 wide, 32 layers, 32 heads, vocabulary 32064); "
     "microsoft/Phi-3-mini-4k-instruct config.json (hidden_size 3072, intermediate_size 8192, 32 layers, "
     "32 heads, 32 KV heads, max_position_embeddings 4096, rms_norm_eps 1e-5, rope_theta 10000, rope_scaling "
     "null, sliding_window 2047, vocab_size 32064, tie_word_embeddings false)"),
    (ModelConfig(name="phi-3-mini-128k", max_seq_len=131072,
                 rope_scaling=RopeScaling(kind="longrope", factor=32.0, original_max_seq_len=4096,
                                          short_factor=SHORT_FACTOR, long_factor=LONG_FACTOR),
                 **_PHI3_MINI),
     "Abdin et al. 2024 (phi-3-mini-128K: LongRoPE); microsoft/Phi-3-mini-128k-instruct config.json "
     "(max_position_embeddings 131072, original_max_position_embeddings 4096, rope_scaling longrope with 48 "
     "short and 48 long factors, sliding_window 262144; the other numbers as the 4k model's)"),
)
