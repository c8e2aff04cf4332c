"""LLaVA 1.5 (`LlavaForConditionalGeneration`, transformers models/llava, 5.23) <-> lmref.

config.json (transformers `models/llava/configuration_llava.py` `LlavaConfig`): `text_config` a
LlamaConfig (read and written by convert/models/llama.py), `vision_config` a CLIPVisionConfig
(`models/clip/configuration_clip.py`), and the image pathway's own fields: `image_token_index`
(`image_token_id` is the same field: LlavaConfig.attribute_map), `projector_hidden_act`,
`multimodal_projector_bias`, `vision_feature_layer` (one index into the tower's hidden states;
a list concatenates several, which lmref does not model), `vision_feature_select_strategy`
("default": drop the class token, "full": keep it; `LlavaModel.get_image_features`).
A `vision_config` dict takes CLIPVisionConfig's class defaults for what it leaves out (ViT-B/32);
an absent one is LlavaConfig's own (ViT-L/14 at 336 px: `sub_configs_defaults`).  The head is
tied when either config says so (`LlavaConfig.__post_init__` forwards the text config's flag).

Checkpoint keys, as the Hub holds them (llava-hf/llava-1.5-7b-hf) and as transformers 5.23's
`save_pretrained` writes them for a model loaded from there (`revert_weight_conversion` undoes
the "llava" renamings and CLIPVisionModel's `PrefixChange(prefix_to_remove="vision_model")` of
`conversion_mapping.py`); transformers 4.x reads the same keys:

    language_model.model.*          LlamaModel: llama.py's `model.*` keys
    language_model.lm_head.weight   the head (absent when tied)
    vision_tower.vision_model.*     CLIPVisionModel: embeddings.{patch_embedding.weight,
                                    class_embedding, position_embedding.weight}, pre_layrnorm,
                                    encoder.layers.{i}.{layer_norm1, self_attn.{q,k,v,out}_proj,
                                    layer_norm2, mlp.{fc1,fc2}}, post_layernorm
    multi_modal_projector.linear_{1,2}.{weight,bias}

The other spellings transformers 5.23 loads are read too (`KEY_ALIASES`): its in-memory names
(`model.language_model.*`, `lm_head.weight`, `model.vision_tower.*`,
`model.multi_modal_projector.*`) and a fresh model's save (`vision_tower.*` without
`vision_model.`).  Every projection is an `nn.Linear` [d_out, d_in]; the patch convolution is
an `nn.Conv2d` weight [Dv, C, p, p] (bias=False), the canonical [C*p*p, Dv] transposed and
unflattened (convert/layout.py `conv`).
"""

from __future__ import annotations

import dataclasses

from lmref.convert.errors import ConversionError
from lmref.convert.fields import ACTIVATION_TO_HF, HFConfig
from lmref.convert.layout import Entry, conv, linear, same
from lmref.convert.models import llama
from lmref.spec.config import ModelConfig, VisionConfig
from lmref.spec.features import declare

MODEL_TYPE = "llava"
ARCHITECTURE = "LlavaForConditionalGeneration"
AUTO_CLASS = "AutoModelForImageTextToText"  # AutoModelForCausalLM has no llava
PREFIX = ""  # every key carries its part's prefix
HEAD = "language_model.lm_head.weight"
TEXT_PREFIX, VISION_PREFIX, PROJECTOR = "language_model.", "vision_tower.vision_model.", "multi_modal_projector"

# LlavaForConditionalGeneration: LlamaModel as the decoder, so llama's features, and the image pathway.
FEATURES = llama.FEATURES | declare("vision")
IGNORED_SUFFIXES = (*llama.IGNORED_SUFFIXES, ".embeddings.position_ids")  # CLIP's buffer, stored by old files
# Where --impl hf captures (the in-memory names of 5.23: LlavaModel holds the decoder as language_model)
LAYER_MODULES = {part: path.replace("model.", "model.language_model.", 1) for part, path in llama.LAYER_MODULES.items()}
VISION_LAYER_MODULES = {"attn": "model.vision_tower.encoder.layers.{i}.self_attn.out_proj",
                        "mlp": "model.vision_tower.encoder.layers.{i}.mlp.fc2",
                        "out": "model.vision_tower.encoder.layers.{i}"}
VISION_EMBED_MODULE = "model.vision_tower.pre_layrnorm"  # its output: hidden state 0
PROJECTOR_MODULE = "model.multi_modal_projector"

# The other layouts transformers 5.23 loads, rewritten in turn into the Hub's.
KEY_ALIASES = (
    (r"^model\.language_model\.", "language_model.model."),
    (r"^lm_head\.", "language_model.lm_head."),
    (r"^model\.(vision_tower|multi_modal_projector)\.", r"\1."),
    (r"^vision_tower\.(?!vision_model\.)", VISION_PREFIX),
)

IGNORED = frozenset({
    "image_seq_length",  # the processor's count of placeholders per image; the model counts them itself
    "ignore_index",  # 4.x's label ignore index (-100), for the loss's labels only; 5.x never reads it
})
VISION_IGNORED = frozenset({
    "attention_dropout", "dropout",  # off in eval
    "initializer_factor",  # initialisation
    "projection_dim",  # CLIPVisionModelWithProjection's head, not part of CLIPVisionModel
    "vocab_size",  # a key the 4.36 conversion left in llava-hf's vision_config; CLIP's tower has no vocabulary
})

# CLIPVisionConfig's class defaults (models/clip/configuration_clip.py: ViT-B/32 at 224 px), and
# what LlavaConfig.sub_configs_defaults gives when vision_config is absent (ViT-L/14 at 336 px).
CLIP_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
LLAVA_VISION_DEFAULTS = CLIP_DEFAULTS | dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                             num_attention_heads=16, image_size=336, patch_size=14)
STRATEGY_FROM_HF = {"default": "drop_class", "full": "full"}
STRATEGY_TO_HF = {lmref: hf for hf, lmref in STRATEGY_FROM_HF.items()}
DEFAULT_IMAGE_TOKEN = 32000  # LlavaConfig.image_token_index


# --- config.json ------------------------------------------------------------------------------


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """LlavaConfig fields -> ModelConfig: the text_config read as llama, with `vision`."""
    text = cfg.sub("text_config", llama.IGNORED)
    text.require("model_type", "llama", ("llama",),
                 "lmref reads llava's decoder as llama only (convert/models/llama.py)")
    decoder = llama.config_from_hf(text, name)
    text.finish()
    vision = vision_from_hf(cfg)
    tied = cfg.flag("tie_word_embeddings", False) or decoder.tie_embeddings  # either (__post_init__)
    legacy_vocab = cfg.get("vocab_size", decoder.vocab_size)  # 4.36-era files repeat the text vocabulary
    if legacy_vocab != decoder.vocab_size:
        cfg.fail("vocab_size", legacy_vocab, f"the decoder's is text_config.vocab_size={decoder.vocab_size}")
    return dataclasses.replace(decoder, hf_model_type=MODEL_TYPE, tie_embeddings=tied, vision=vision)


# VisionConfig's sizes: CLIPVisionConfig's keys, each a positive integer.
TOWER_SIZES = {"image_size": "image_size", "patch_size": "patch_size", "n_channels": "num_channels",
               "d_model": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
               "d_ff": "intermediate_size"}


def vision_from_hf(cfg: HFConfig) -> VisionConfig:
    """vision_config (a CLIPVisionConfig) and LlavaConfig's image fields -> VisionConfig."""
    absent = cfg.data.get("vision_config") is None
    defaults = LLAVA_VISION_DEFAULTS if absent else CLIP_DEFAULTS
    tower = cfg.sub("vision_config", VISION_IGNORED)
    tower.require("model_type", "clip_vision_model", ("clip_vision_model",),
                  "lmref's vision tower is CLIP's (transformers CLIPVisionModel)")
    fields = dict(
        **{field: tower.positive_integer(key, defaults[key]) for field, key in TOWER_SIZES.items()},
        activation=tower.activation("hidden_act", defaults["hidden_act"]),
        norm_eps=tower.number("layer_norm_eps", defaults["layer_norm_eps"]),
    )
    tower.finish()
    return VisionConfig(
        **fields, feature_layer=feature_layer(cfg), feature_strategy=feature_strategy(cfg),
        projector_activation=cfg.activation("projector_hidden_act", "gelu"),
        projector_bias=cfg.flag("multimodal_projector_bias", True),
        image_token_id=cfg.either(("image_token_index", "image_token_id"), DEFAULT_IMAGE_TOKEN),
    )


def feature_layer(cfg: HFConfig) -> int:
    layer = cfg.get("vision_feature_layer", -2)
    if isinstance(layer, list):
        cfg.fail("vision_feature_layer", layer, "a list of layers (their features concatenated) has no lmref "
                 "equivalent: lmref's vision.feature_layer is one layer")
    if isinstance(layer, bool) or not isinstance(layer, int):
        cfg.fail("vision_feature_layer", layer, "it must be an integer index into the tower's hidden states")
    return layer


def feature_strategy(cfg: HFConfig) -> str:
    strategy = cfg.require("vision_feature_select_strategy", "default", tuple(STRATEGY_FROM_HF),
                           "LlavaModel.get_image_features knows 'default' (drop the class token) and 'full'")
    return STRATEGY_FROM_HF[strategy]


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> LlavaConfig fields; ConversionError if LLaVA cannot express it."""
    v = c.vision
    if v is None:
        raise ConversionError(f"config {c.name!r} cannot be expressed as transformers' llava: it has no vision tower")
    try:
        text = llama.config_to_hf(dataclasses.replace(c, vision=None))
    except ConversionError as e:
        raise ConversionError(f"config {c.name!r} cannot be expressed as transformers' llava, its text_config: {e}"
                              ) from None
    problems = [f"vision.{field}={getattr(v, field)!r} has no transformers name; known: {', '.join(ACTIVATION_TO_HF)}"
                for field in ("activation", "projector_activation") if getattr(v, field) not in ACTIVATION_TO_HF]
    if problems:
        raise ConversionError(f"config {c.name!r} cannot be expressed as transformers' llava: " + "; ".join(problems))
    return {
        "text_config": {"model_type": "llama", **text}, "vision_config": vision_to_hf(v),
        "image_token_index": v.image_token_id, "image_seq_length": v.tokens_per_image,
        "projector_hidden_act": ACTIVATION_TO_HF[v.projector_activation],
        "multimodal_projector_bias": v.projector_bias, "vision_feature_layer": v.feature_layer,
        "vision_feature_select_strategy": STRATEGY_TO_HF[v.feature_strategy],
        "tie_word_embeddings": c.tie_embeddings,
    }


def vision_to_hf(v: VisionConfig) -> dict:
    """`vision_from_hf`'s inverse for the tower: a CLIPVisionConfig dict."""
    return {"model_type": "clip_vision_model", "hidden_size": v.d_model, "intermediate_size": v.d_ff,
            "num_hidden_layers": v.n_layers, "num_attention_heads": v.n_heads, "num_channels": v.n_channels,
            "image_size": v.image_size, "patch_size": v.patch_size, "hidden_act": ACTIVATION_TO_HF[v.activation],
            "layer_norm_eps": v.norm_eps}


# --- tensors ----------------------------------------------------------------------------------


def _in_language_model(entry: Entry) -> Entry:
    """llama's entry under LlavaForConditionalGeneration's `language_model.` (the Hub's keys)."""
    return dataclasses.replace(entry, hf=TEXT_PREFIX + entry.hf)


def _layer_norm(hf: str, canonical: str) -> list[Entry]:
    return [same(f"{hf}.weight", f"{canonical}.weight"), same(f"{hf}.bias", f"{canonical}.bias")]


def _linear_with_bias(hf: str, weight: str, bias: str) -> list[Entry]:
    return [linear(f"{hf}.weight", weight), same(f"{hf}.bias", bias)]


def tower_layer_entries(i: int) -> list[Entry]:
    """Layer i of CLIP's encoder (`CLIPEncoderLayer`): every projection with its bias."""
    h, p = f"{VISION_PREFIX}encoder.layers.{i}", f"vision.layers.{i}"
    table = _layer_norm(f"{h}.layer_norm1", f"{p}.attn_norm") + _layer_norm(f"{h}.layer_norm2", f"{p}.mlp_norm")
    for hf, ours in (("q", "q"), ("k", "k"), ("v", "v"), ("out", "o")):
        table += _linear_with_bias(f"{h}.self_attn.{hf}_proj", f"{p}.attn.w{ours}", f"{p}.attn.b{ours}")
    return (table + _linear_with_bias(f"{h}.mlp.fc1", f"{p}.mlp.w_up", f"{p}.mlp.b_up")
            + _linear_with_bias(f"{h}.mlp.fc2", f"{p}.mlp.w_down", f"{p}.mlp.b_down"))


def vision_entries(c: ModelConfig) -> list[Entry]:
    """The CLIP tower (`CLIPVisionEmbeddings`: the patch conv without bias, class token, positions)
    and the projector (`LlavaMultiModalProjector`: linear_1, act, linear_2)."""
    v, e = c.vision, f"{VISION_PREFIX}embeddings"
    table = [conv(f"{e}.patch_embedding.weight", "vision.patch_embed", (v.n_channels, v.patch_size, v.patch_size)),
             same(f"{e}.class_embedding", "vision.class_embed"),
             same(f"{e}.position_embedding.weight", "vision.positions")]
    table += _layer_norm(f"{VISION_PREFIX}pre_layrnorm", "vision.pre_norm")  # sic: CLIP's spelling
    for i in range(v.n_layers):
        table += tower_layer_entries(i)
    table += _layer_norm(f"{VISION_PREFIX}post_layernorm", "vision.post_norm")
    for j in (1, 2):
        table.append(linear(f"{PROJECTOR}.linear_{j}.weight", f"projector.w{j}"))
        table += [same(f"{PROJECTOR}.linear_{j}.bias", f"projector.b{j}")] if v.projector_bias else []
    return table


def entries(c: ModelConfig) -> list[Entry]:
    """llama's decoder tensors under `language_model.`, then the tower and the projector."""
    return [_in_language_model(e) for e in llama.entries(c)] + vision_entries(c)
