"""`--impl hf`: Hugging Face transformers itself, checked against the golden.

    pytest conformance/ --impl hf --arch gpt2,llama,olmo*,mpt

For every call the adapter exports the case's config and weights in float32 with
`convert.to_hf` and loads them with `AutoModelForCausalLM.from_pretrained(...,
attn_implementation="eager", dtype=torch.float32)` (the type's `AUTO_CLASS` where
AutoModelForCausalLM has none: llava's AutoModelForImageTextToText), insisting that every
weight was loaded (from_pretrained only warns about missing keys).  Eager attention is
transformers' reference path: the sdpa path skips some of the math (Gemma 2's softcapping).
A mixture of experts also runs its experts eagerly (`experts_implementation="eager"`: one
expert at a time, a plain loop; the default "grouped_mm" kernel refuses float64,
integrations/moe.py).  The model runs in eval mode under `torch.no_grad`; decode uses
transformers' own KV cache (`past_key_values`).

The config runs as the transformers type its `hf_model_type` names.  A config that needs a
feature that type lacks raises `UnsupportedFeature` naming it (the type's feature set:
convert/features.py); one with no type (hf_model_type None: OLMo with ALiBi has no
transformers class), or one the type cannot express field by field (convert/fields.py
`check_expressible`), raises NotImplementedError with the converter's reason, saying that
transformers has no model for it.  So does a weight that float32 cannot hold (a float64 value
beyond its range, which `to_hf` refuses to write as inf), naming the tensor: transformers has
the model, but this float32 backend cannot load those weights.  The suite
reports both as NOT SUPPORTED, as it does a LongRoPE decode that crosses the original context
(`check_crossing`: transformers' cache keeps what the short factors made).  A mixture's training
objective transformers' `labels=` loss is not (a per-layer load-balancing loss, a router z-loss:
spec/features.py OBJECTIVE) makes only `loss` NOT SUPPORTED; the forward is the same model, and
the other checks run.  (PaLM's logit z-loss, the other OBJECTIVE feature, is a field no type's
config.json holds: a config with it is not expressible at all.)  Needs torch and transformers
(`pip install lmref[torch,hf]`).

A multimodal case's images (`pixel_values`, checked as every backend checks them:
spec/vision.py `check_images`) go to `LlavaForConditionalGeneration` in float32 with the tokens;
decode gives them to the prefill only (the placeholders all sit in the prompt), and the loss's
labels are -100 (transformers' ignore index) at the placeholders, the targets lmref skips.
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch
import transformers
from lmref.convert.errors import ConversionError
from lmref.convert.features import FEATURES_BY_TYPE
from lmref.convert.hf import auto_class_name, hf_config, module_for, to_hf
from lmref.spec.captures import capture_names, moe_layers
from lmref.spec.config import ModelConfig
from lmref.spec.features import OBJECTIVE, check_supported
from lmref.spec.plan import original_context
from lmref.spec.vision import VISION_LAYER_COMPONENTS, check_images

IGNORE_INDEX = -100  # transformers' ForCausalLMLoss: labels with this value are no target


def transformers_model(describe, config: ModelConfig):
    """`describe(config)` (convert/hf.py `module_for`, `hf_config`); NotImplementedError (NOT
    SUPPORTED) when it finds that transformers has no model for `config`: no type, an unknown
    one, or one that cannot express a field."""
    try:
        return describe(config)
    except ConversionError as e:
        raise NotImplementedError(f"transformers has no model for this config: {e}") from None


def export_float32(config: ModelConfig, params: dict[str, np.ndarray], directory: str) -> None:
    """`to_hf` in float32, the dtype this backend runs, of a config transformers can express;
    NotImplementedError (NOT SUPPORTED) naming the tensor when a weight does not fit float32 (a
    float64 value beyond its range): transformers has a model, this backend cannot load it."""
    transformers_model(hf_config, config)
    try:
        to_hf(config, params, directory, dtype="float32")
    except ConversionError as e:
        raise NotImplementedError(f"the hf backend runs in float32, and these weights cannot be written as "
                                  f"float32: {e}") from None


def check_features(config: ModelConfig, implemented: frozenset[str]) -> None:
    """UnsupportedFeature naming what `config` needs beyond `implemented`, of its hf type."""
    check_supported(config, f"hf ({config.hf_model_type})", implemented)


def check_crossing(config: ModelConfig, prompt_len: int, total: int) -> None:
    """NotImplementedError (NOT SUPPORTED) for a decode that takes a LongRoPE sequence from a
    prompt within the original context O past it.  lmref's step t is a prefill of tokens 0..t
    (spec/MATH.md, "LongRoPE"): past O every position rotates with the long factors.  transformers
    switches the factors of the step's own positions only (`longrope_frequency_update`); its
    cache keeps the keys and values the short factors made (measured: docs/huggingface.md)."""
    o = original_context(config)
    if o is not None and prompt_len <= o < total:
        raise NotImplementedError(
            f"transformers' cached decode keeps the keys and values of the {prompt_len}-token prompt computed with "
            f"LongRoPE's short factors when the sequence grows past original_max_position_embeddings={o}; lmref's "
            "decode equals a prefill of each prefix, which recomputes them with the long factors")


def _recorder(captured: dict, name: str, index: int = 0):
    """A forward hook storing a copy of a module's output (element `index` of a tuple) as
    `name`: a copy, because a layer may add to that tensor in place afterwards (Falcon's
    parallel `FalconDecoderLayer`: `mlp_output += attention_output`)."""
    def hook(module, args, output):
        captured[name] = (output[index] if isinstance(output, tuple) else output).clone()
    return hook


def _input_recorder(captured: dict, name: str):
    """A forward hook storing a copy of a module's first input as `name` (the features LLaVA's
    projector is given, `LlavaModel.get_image_features`)."""
    def hook(module, args, output):
        captured[name] = args[0].clone()
    return hook


def _choice_recorder(chosen: dict, name: str):
    """A forward pre-hook storing the experts a layer dispatches to as `name`: every type's
    experts module is called as experts(hidden [T, d], top_k_index [T, k], top_k_weights)
    (`MixtralSparseMoeBlock.forward`, `Qwen2MoeSparseMoeBlock.forward`, ..., `DbrxFFN.forward`)."""
    def hook(module, args):
        chosen[name] = args[1]
    return hook


def _router_choice_recorder(chosen: dict, name: str, choose, k: int):
    """A forward hook storing the experts a layer dispatches to as `name`, read from its
    router's output by the type's `chosen_experts` (Llama 4: its experts module takes every
    token, scaled by the router's scores, so the choice is in the scores)."""
    def hook(module, args, output):
        chosen[name] = choose(output, k)
    return hook


def model_inputs(config: ModelConfig, tokens: np.ndarray, pixel_values=None, prompt_len: int | None = None
                 ) -> dict[str, torch.Tensor]:
    """`input_ids`, and a multimodal case's `pixel_values` as float32, after spec/vision.py's
    checks (an InputError names a wrong image size, a placeholder count the images do not fill,
    ...; with `prompt_len`, a placeholder past the prompt)."""
    images = check_images(config, tokens, pixel_values, prompt_len=prompt_len)
    inputs = {"input_ids": torch.from_numpy(tokens)}
    return inputs | ({} if images is None else {"pixel_values": torch.from_numpy(images.astype(np.float32))})


def labels(config: ModelConfig, ids: torch.Tensor) -> torch.Tensor:
    """The `labels=` of lmref's loss: the tokens, IGNORE_INDEX at the image placeholders (LLaVA's
    training labels are IGNORE_INDEX there; impl_numpy.loss skips those targets)."""
    if config.vision is None:
        return ids
    return ids.masked_fill(ids == config.vision.image_token_id, IGNORE_INDEX)


def vision_targets(config: ModelConfig, module) -> list[tuple[str, str, int]]:
    """(capture name, module path, output index) of the tower: its pre-LayerNorm's output
    (hidden state 0: class token and patches with their positions, pre-normed), and each run
    layer's out_proj, fc2 and whole layer (what it adds to, and leaves in, the residual stream)."""
    layers = module.VISION_LAYER_MODULES
    return [("vision.embed", module.VISION_EMBED_MODULE, 0)] + [
        (f"vision.layers.{i}.{part}", layers[part].format(i=i), 0)
        for i in range(config.vision.layers_run) for part in VISION_LAYER_COMPONENTS]


def _hooked_run(model, hooks: list, **inputs):
    """`model(**inputs)` under `torch.no_grad` with forward `hooks` registered, removed after."""
    try:
        with torch.no_grad():
            return model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()


class HFAdapter:
    """transformers' eager float32 model for each golden case (forward, decode, loss, capture,
    routing)."""

    name = "hf"
    version = f"transformers {transformers.__version__}"
    dtype = "float32"

    def build_model(self, config: ModelConfig, params: dict[str, np.ndarray]) -> torch.nn.Module:
        """The transformers model of (config, params), float32, eval mode."""
        model_type = transformers_model(module_for, config).MODEL_TYPE
        check_features(config, FEATURES_BY_TYPE[model_type] | frozenset(OBJECTIVE))
        with tempfile.TemporaryDirectory() as tmp:
            export_float32(config, params, tmp)
            auto_class = getattr(transformers, auto_class_name(model_type))
            model, info = auto_class.from_pretrained(
                tmp, attn_implementation="eager", dtype=torch.float32, output_loading_info=True,
                **({"experts_implementation": "eager"} if config.moe is not None else {}))
        problems = {kind: sorted(keys) for kind, keys in info.items() if keys}
        if problems:
            raise RuntimeError(f"from_pretrained did not load the exported weights exactly: {problems}")
        return model.eval()

    def forward(self, config, params, tokens, pixel_values=None):
        inputs = model_inputs(config, tokens, pixel_values)
        model = self.build_model(config, params)
        with torch.no_grad():
            return model(**inputs).logits.numpy()  # [B, S, V] float32

    def decode(self, config, params, tokens, prompt_len, pixel_values=None):
        """Prefill `prompt_len` tokens (and the images), then one token per call through
        `past_key_values`; NOT SUPPORTED for a LongRoPE decode that crosses the original
        context (`check_crossing`)."""
        check_crossing(config, prompt_len, tokens.shape[1])
        inputs = model_inputs(config, tokens, pixel_values, prompt_len)
        model = self.build_model(config, params)
        ids = inputs.pop("input_ids")
        with torch.no_grad():
            out = model(input_ids=ids[:, :prompt_len], use_cache=True, **inputs)
            steps = [out.logits]
            for t in range(prompt_len, ids.shape[1]):
                out = model(input_ids=ids[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True)
                steps.append(out.logits)
        return torch.cat(steps, dim=1).numpy()  # [B, S, V]

    def loss(self, config, params, tokens, pixel_values=None):
        """transformers' `labels=` loss (`ForCausalLMLoss`): logits of position t against
        token t + 1, cross-entropy averaged over the B * (S - 1) targets but the image
        placeholders (`labels`): lmref's definition.
        A mixture of experts adds `router_aux_loss_coef` times `load_balancing_loss_func` of
        the router logits of every token, lmref's "pooled" kind, only when asked for the router
        logits (`MixtralForCausalLM.forward` and its kin: `if output_router_logits:`); another
        objective (DBRX's and OLMoE's authors') is NOT SUPPORTED, naming its feature."""
        check_features(config, FEATURES_BY_TYPE[transformers_model(module_for, config).MODEL_TYPE])
        inputs = model_inputs(config, tokens, pixel_values)
        model = self.build_model(config, params)
        routers = {"output_router_logits": True} if config.moe is not None else {}
        with torch.no_grad():
            out = model(**inputs, labels=labels(config, inputs["input_ids"]), **routers)
        return out.loss.numpy()  # 0-d float32

    def capture(self, config, params, tokens, pixel_values=None):
        """lmref's captured intermediates, from transformers' hidden states and forward hooks.

        `output_hidden_states` gives L + 1 tensors in every supported model type: [0] the embedding
        output (GPT-2: tokens + positions), [i] the residual stream entering layer i, i.e.
        `layers.{i-1}.out`, and [L] the output of the final norm (llama/olmo/gpt2:
        `capture_outputs` swaps in `last_hidden_state`, as mistral's does; mpt appends `norm_f`'s output), so the
        last layer's own output is not among them.  Forward hooks supply it, and each layer's
        attention and MLP outputs: the output projections (o_proj / c_proj / out_proj,
        down_proj / c_proj) produce exactly what the sublayer adds to the residual stream
        (the dropouts after them are off in eval); a mixture's whole block does (its routed
        and shared experts together; Llama 4's returns them [B*S, d]), and its router's
        output `ROUTER_LOGITS` (the first unless the type's module says otherwise) is the
        logits [B*S, E].  With images, the tower's parts (`vision_targets`), and the projector's
        input and output: the features it is given, and what replaces the placeholders' embeddings.
        """
        inputs = model_inputs(config, tokens, pixel_values)
        model = self.build_model(config, params)
        module = module_for(config)
        modules, logits_index = module.LAYER_MODULES, getattr(module, "ROUTER_LOGITS", 0)
        captured: dict = {}
        last = config.n_layers - 1
        targets = [(f"layers.{i}.{part}", modules[part].format(i=i), 0) for i in range(config.n_layers)
                   for part in ("attn", "mlp")] + [(f"layers.{last}.out", modules["out"].format(i=last), 0)]
        targets += [(f"layers.{i}.router", modules["router"].format(i=i), logits_index) for i in moe_layers(config)]
        images = "pixel_values" in inputs
        targets += vision_targets(config, module) if images else []
        hooks = [model.get_submodule(path).register_forward_hook(_recorder(captured, name, index))
                 for name, path, index in targets]
        if images:
            projector = model.get_submodule(module.PROJECTOR_MODULE)
            hooks += [projector.register_forward_hook(_input_recorder(captured, "vision.features")),
                      projector.register_forward_hook(_recorder(captured, "projector"))]
        out = _hooked_run(model, hooks, **inputs, output_hidden_states=True)
        states = out.hidden_states  # L + 1 tensors [B, S, d_model]
        captured |= {"embed": states[0], "final_norm": states[-1], "logits": out.logits}
        captured |= {f"layers.{i}.out": states[i + 1] for i in range(last)}
        captured |= {f"layers.{i}.{part}": captured[f"layers.{i}.{part}"].reshape(*tokens.shape, -1)
                     for i in moe_layers(config) for part in ("router", "mlp")}  # [B * S, ...] -> [B, S, ...]
        return {name: captured[name].numpy() for name in capture_names(config, images)}

    def routing(self, config, params, tokens, pixel_values=None):
        """{"layers.{i}": the experts [B, S, k] each token of every mixture layer is sent to},
        as transformers dispatches them (the `top_k_index` its experts module is called with;
        Llama 4: the experts its router's scores send a nonzero input, `chosen_experts`)."""
        model = self.build_model(config, params)
        module = module_for(config)
        modules = module.LAYER_MODULES
        chosen: dict = {}
        if "experts" in modules:
            hooks = [model.get_submodule(modules["experts"].format(i=i)).register_forward_pre_hook(
                _choice_recorder(chosen, f"layers.{i}")) for i in moe_layers(config)]
        else:  # an experts module that is not told the choice (Llama 4): the type reads it from the router
            hooks = [model.get_submodule(modules["router"].format(i=i)).register_forward_hook(_router_choice_recorder(
                chosen, f"layers.{i}", module.chosen_experts, config.moe.n_experts_per_token))
                for i in moe_layers(config)]
        _hooked_run(model, hooks, **model_inputs(config, tokens, pixel_values))
        return {name: index.reshape(*tokens.shape, -1).numpy() for name, index in chosen.items()}  # [B, S, k]
