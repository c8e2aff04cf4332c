"""LLaVA 1.5 (Liu et al. 2023, "Improved Baselines with Visual Instruction Tuning"): a CLIP
ViT-L/14 tower at 336 pixels (Radford et al. 2021), a two-layer GELU projector ("mlp2x_gelu"),
and the Vicuna v1.5 decoder (a fine-tuned Llama 2: pre-norm RMSNorm, SwiGLU, RoPE, no biases).

The image's 24 x 24 = 576 patch features of the tower's penultimate layer (vision_feature_layer
-2, the class token dropped: vision_feature_select_strategy "default") replace 576 `<image>`
placeholder tokens (id 32000) in the decoder's input embeddings.  The numbers are those of the
transformers-format checkpoints (llava-hf/llava-1.5-7b-hf and -13b-hf config.json): their
vocabulary of 32064 rows holds Llama 2's 32000, `<image>` and `<pad>`, padded to a multiple of
64; the authors' own checkpoints (liuhaotian/llava-v1.5-7b) keep 32000 rows and mark the image
with the index -200 in code instead of a token.
"""

from lmref.spec.config import ModelConfig, VisionConfig
from lmref.spec.presets.preset import family

# openai/clip-vit-large-patch14-336 vision_config: hidden_size 1024, 24 layers, 16 heads,
# intermediate_size 4096, patch_size 14, image_size 336, hidden_act quick_gelu, layer_norm_eps 1e-5.
_CLIP_VIT_L_336 = VisionConfig(
    image_size=336, patch_size=14, n_channels=3, d_model=1024, n_layers=24, n_heads=16, d_ff=4096,
    activation="quick_gelu", norm_eps=1e-5, feature_layer=-2, feature_strategy="drop_class",
    projector_activation="gelu", projector_bias=True, image_token_id=32000,
)

# Vicuna v1.5 = Llama 2 (lmsys/vicuna-7b-v1.5, -13b-v1.5 config.json): context 4096, rms_norm_eps 1e-5.
_VICUNA = dict(
    hf_model_type="llava", vocab_size=32064, max_seq_len=4096, position="rope", rope_theta=10_000.0,
    rope_layout="halves", norm="rmsnorm", norm_eps=1e-5, mlp="gated", activation="silu", vision=_CLIP_VIT_L_336,
)

PRESETS = family(
    "llava",
    (ModelConfig(name="llava-1.5-7b", d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, head_dim=128,
                 d_ff=11008, **_VICUNA),
     "llava-hf/llava-1.5-7b-hf config.json (text: Vicuna-7B v1.5, vocab 32064; vision: CLIP ViT-L/14-336; "
     "image_token_index 32000, projector_hidden_act gelu, vision_feature_layer -2, strategy default); "
     "7,063,427,072 parameters (LlavaForConditionalGeneration, counted in transformers)"),
    (ModelConfig(name="llava-1.5-13b", d_model=5120, n_layers=40, n_heads=40, n_kv_heads=40, head_dim=128,
                 d_ff=13824, **_VICUNA),
     "llava-hf/llava-1.5-13b-hf config.json (text: Vicuna-13B v1.5: d 5120, 40 layers, 40 heads, "
     "intermediate 13824, vocab 32064; vision as 7b)"),
)
