"""The decoder-only LM as an nn.Module, torch twin of impl_numpy/model.py.

    h = embed_norm(embed.tokens[tokens]) (* sqrt(d_model)) (+ embed.positions[p])   (embed_norm: BLOOM)
        (images: their projected patches replace the placeholders' rows of the lookup first,
        impl_torch/vision.py: the modules `vision` and `projector`)
    for each layer:                      (the plan's `norms`, spec/MATH.md "Block")
        h = h + attn(attn_norm(h))           pre (GPT-2, LLaMA)
        h = h + attn_post_norm(attn(attn_norm(h)))   sandwich (Gemma 2/3)
        h = h + attn_post_norm(attn(h))      post_sublayer (OLMo 2)
        (the MLP likewise, with mlp_norm and mlp_post_norm)
    logits = final_norm(h) @ W_head (+ b)      W_head = embed.tokens^T when tied (unscaled)
    logits = logits * logit_scale              Cohere; PaLM's d_model^-0.5
    logits = c tanh(logits / c)                final_logit_softcap c (Gemma 2)

A "moe" layer's MLP is the mixture of experts of impl_torch/moe.py; `moe_dispatch` picks how
its tokens reach their experts ("sorted", "loop", or "dense" for torch.export / ONNX), the
same math each way.

Each layer is built from its plan (spec/plan.py); a config that needs a feature the twin
does not compute (impl_torch/features.py) is refused with UnsupportedFeature, by name.
Module names follow the canonical parameter names (spec/params.py), so `layers.0.attn.wq`
is an nn.Linear whose `.weight` is the transpose of the canonical `layers.0.attn.wq` and
whose `.bias` is `layers.0.attn.bq`; the stacked experts `layers.{i}.mlp.experts.w_*`
[E, d_in, d_out] are Parameters in the canonical layout itself.  `forward` checks its inputs
and keeps the cache's length; `logits` is the tensor-only computation under it (what
torch.compile and an ONNX export wraps, export/decoder.py).  `capture` receives the
intermediates named by `lmref.spec.captures.capture_names(config)` (`images=True` with
`pixel_values`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lmref.impl_torch.attention import ATTN_IMPLS, Attention, ScoreBiases, Step, kernel_of, softcap
from lmref.impl_torch.cache import KVCache, rerun
from lmref.impl_torch.constants import ConfigTensors
from lmref.impl_torch.embedding import Embedding
from lmref.impl_torch.features import FEATURES
from lmref.impl_torch.inputs import check_images, check_tokens
from lmref.impl_torch.mlp import MLP
from lmref.impl_torch.moe import MoE, check_dispatch
from lmref.impl_torch.norms import Norm, upcast
from lmref.impl_torch.objective import objective, scored_targets
from lmref.impl_torch.rope import rope_cos_sin
from lmref.impl_torch.vision import Projector, VisionTower
from lmref.spec.config import ModelConfig
from lmref.spec.features import check_supported
from lmref.spec.params import check_params, param_shapes
from lmref.spec.plan import LayerPlan, crosses_original_context, distinct_ropes, layer_plan

BACKEND = "torch"

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_PROJECTIONS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down", "router", "shared_gate", "patch_embed", "w1",
                "w2")
_BIASES = ("bq", "bk", "bv", "bo", "b_gate", "b_up", "b_down", "b1", "b2")


def torch_name(canonical: str) -> tuple[str, bool]:
    """Canonical parameter name -> (name in the module, whether it is stored transposed).

    nn.Linear keeps its weight as [d_out, d_in] and computes x @ W.T; the canonical layout is
    [d_in, d_out] applied as x @ W (spec/params.py), hence the transpose of every projection.
    """
    prefix, _, leaf = canonical.rpartition(".")
    if canonical in ("embed.tokens", "embed.positions"):
        return f"{canonical}.weight", False  # nn.Embedding weight [num, d_model], as canonical
    if ".mlp.experts." in canonical:
        return canonical, False  # a stacked Parameter [E, d_in, d_out], as canonical
    if leaf in _PROJECTIONS:
        return f"{canonical}.weight", True
    if canonical == "lm_head.weight":
        return canonical, True
    if leaf in _BIASES:
        return f"{prefix}.w{leaf[1:]}.bias", False  # bq -> wq.bias, b_up -> w_up.bias
    return canonical, False  # norm weights and biases, lm_head.bias, vision.class_embed, vision.positions


def placed_norm(config: ModelConfig, present: bool, dtype: torch.dtype, device) -> nn.Module:
    """The config's norm where the plan puts one, the identity where it puts none."""
    return Norm.of(config, dtype, device) if present else nn.Identity()


class Block(nn.Module):
    """The layer planned by `plan`: [B, S, d_model] -> [B, S, d_model].  Its norms sit where
    `plan.norms` says: before each sublayer ("pre", "sandwich"), after it ("sandwich",
    "post_sublayer"), the identity elsewhere.  Its MLP is a mixture of experts when `plan.mlp`
    is "moe".  A parallel layer (`parallel_residual`, spec/MATH.md "Block") adds both
    sublayers to its input, the MLP reading `attn_norm`'s output with `shared_attn_norm`."""

    def __init__(self, config: ModelConfig, plan: LayerPlan, dtype: torch.dtype, device=None):
        super().__init__()
        self.index = plan.index
        pre, post = plan.norms in ("pre", "sandwich"), plan.norms in ("sandwich", "post_sublayer")
        self.attn_norm = placed_norm(config, pre, dtype, device)
        self.attn = Attention(config, plan, dtype, device)
        self.attn_post_norm = placed_norm(config, post, dtype, device)
        self.parallel, self.shared_norm = config.parallel_residual, config.shared_attn_norm
        self.mlp_norm = placed_norm(config, pre and not self.shared_norm, dtype, device)
        self.mlp = MoE(config, dtype, device) if plan.mlp == "moe" else MLP(config, dtype, device)
        self.mlp_post_norm = placed_norm(config, post, dtype, device)

    def forward(self, h: torch.Tensor, step: Step, capture: bool = False) -> tuple[torch.Tensor, dict]:
        """(h after the layer, its intermediates by component): with `capture`, "attn",
        "router" (a "moe" layer's logits [B, S, E]), "mlp", "out" in computation order;
        without, a "moe" layer's "router" only (the loss needs it).  Returned rather than
        written into a dict argument: FSDP hands a wrapped block copies of its arguments."""
        if self.parallel:
            return self.parallel_forward(h, step, capture)
        a = self.attn_post_norm(self.attn(self.attn_norm(h), step))  # what the attention adds
        h = h + a
        parts = {"attn": a} if capture else {}
        m = self.feed_forward(self.mlp_norm(h), parts)
        m = self.mlp_post_norm(m)
        h = h + m
        if capture:
            parts |= {"mlp": m, "out": h}
        return h, parts

    def parallel_forward(self, h: torch.Tensor, step: Step, capture: bool) -> tuple[torch.Tensor, dict]:
        """h + attn(attn_norm(h)) + mlp(mlp_norm(h)), or mlp(attn_norm(h)) with a shared norm."""
        x = self.attn_norm(h)
        a = self.attn(x, step)
        parts = {"attn": a} if capture else {}
        m = self.feed_forward(x if self.shared_norm else self.mlp_norm(h), parts)
        h = h + a + m
        if capture:
            parts |= {"mlp": m, "out": h}
        return h, parts

    def feed_forward(self, x: torch.Tensor, parts: dict) -> torch.Tensor:
        """The MLP of x [B, S, d_model]; a mixture's router logits [B, S, E] go into `parts`."""
        m = self.mlp(x)
        if isinstance(self.mlp, MoE):
            m, parts["router"] = m  # [B, S, d_model], [B, S, E]
        return m


class Transformer(nn.Module):
    """A decoder-only LM for any config spec validation accepts.

    `Transformer(config)` has torch's default init; `from_canonical(config, params)` loads
    canonical params (e.g. spec.init_params).  The model holds no buffers (RoPE frequencies
    and masks are computed in forward; ALiBi's slopes and LongRoPE's factors are float64
    tensors of `constants`, cast where they are used), so `.to(dtype)` / `.to(device)` move
    every parameter and round nothing else.
    """

    def __init__(self, config: ModelConfig, *, dtype: torch.dtype = torch.float32, device=None,
                 attn_impl: str = "sdpa", moe_dispatch: str = "sorted"):
        super().__init__()
        check_supported(config, BACKEND, FEATURES)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {[str(d) for d in DTYPES]}, got {dtype}")
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {list(ATTN_IMPLS)}, got {attn_impl!r}")
        self.config, self.attn_impl = config, attn_impl
        self.embed = Embedding(config, dtype, device)
        self.layers = nn.ModuleList(Block(config, plan, dtype, device) for plan in layer_plan(config))
        self.moe_dispatch = moe_dispatch
        self.ropes = distinct_ropes(config)  # the plan's rotary embeddings, each once
        self.constants = ConfigTensors(config)  # ALiBi's slopes, LongRoPE's factors: float64, not state
        self.final_norm = Norm.of(config, dtype, device)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=config.lm_head_bias,
                                 dtype=dtype, device=device)
        if config.tie_embeddings:
            # nn.Linear's [vocab, d_model] weight is the embedding table itself: one Parameter.
            self.lm_head.weight = self.embed.tokens.weight
        if config.vision is not None:  # LLaVA's image pathway: canonical `vision.*`, `projector.*`
            self.vision = VisionTower(config.vision, dtype, device)
            self.projector = Projector(config, dtype, device)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.tokens.weight.device

    @property
    def moe_dispatch(self) -> str:
        """How the "moe" layers dispatch tokens to experts (impl_torch/moe.py); settable, e.g.
        "dense" on a trained model before torch.export."""
        return self._moe_dispatch

    @moe_dispatch.setter
    def moe_dispatch(self, dispatch: str) -> None:
        self._moe_dispatch = check_dispatch(dispatch)
        for layer in self.layers:
            if isinstance(layer.mlp, MoE):
                layer.mlp.dispatch = dispatch

    # --- canonical parameters ------------------------------------------------------------
    @classmethod
    def from_canonical(cls, config: ModelConfig, params: dict[str, np.ndarray], *,
                       dtype: torch.dtype = torch.float32, device=None, attn_impl: str = "sdpa",
                       moe_dispatch: str = "sorted") -> Transformer:
        """A model holding `params` (canonical layout, any float dtype) rounded to `dtype`."""
        check_supported(config, BACKEND, FEATURES)
        check_params(config, params)
        model = cls(config, dtype=dtype, device=device, attn_impl=attn_impl, moe_dispatch=moe_dispatch)
        with torch.no_grad():
            for name, value in params.items():
                target, transposed = torch_name(name)
                array = np.asarray(value).T if transposed else np.asarray(value)
                model.get_parameter(target).copy_(torch.from_numpy(np.ascontiguousarray(array)))
        return model

    def to_canonical(self) -> dict[str, np.ndarray]:
        """The parameters in the canonical layout, as NumPy arrays of the model's dtype
        (float32 for bfloat16, which NumPy lacks and float32 holds exactly)."""
        params = {}
        for name in param_shapes(self.config):
            target, transposed = torch_name(name)
            t = self.get_parameter(target).detach()
            t = t.T if transposed else t  # back to [d_in, d_out]
            t = t.float() if t.dtype == torch.bfloat16 else t
            params[name] = t.cpu().numpy().copy()
        return params

    # --- running ---------------------------------------------------------------------------
    def new_cache(self, batch: int, capacity: int | None = None) -> KVCache:
        return KVCache.empty(self.config, batch, capacity=capacity, dtype=self.dtype, device=self.device)

    def forward(self, tokens, cache: KVCache | None = None, capture: dict | None = None, *, pixel_values=None,
                output_router_logits: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits [B, S, vocab] for tokens [B, S] (tensor, array or list); with a cache, the
        tokens follow its contents, and the cache takes them in.  `pixel_values` [N, C, H, W]
        (tensor or array): the images whose features fill the image placeholders of `tokens`
        (spec/vision.py `check_images`), cast to the model's dtype.

        `output_router_logits`: return (logits, [router logits [B, S, E] of each "moe" layer,
        in order]), what the loss needs, as outputs: DDP and FSDP pass them back (FSDP hands
        the module a copy of a `capture` dict given to the wrapper, so it stays empty)."""
        past = 0 if cache is None else cache.length
        tokens = check_tokens(self.config, tokens, past_len=past, device=self.device)
        images = check_images(self.config, tokens, pixel_values, device=self.device, dtype=self.dtype)
        if cache is not None:
            cache.check_room(*tokens.shape)
            if crosses_original_context(self.config, past, past + tokens.shape[1]):
                logits, routers = rerun(self, tokens, cache, capture)  # LongRoPE past O (spec/MATH.md)
                return (logits, routers) if output_router_logits else logits
        positions = past + torch.arange(tokens.shape[1], device=self.device)[None]  # [1, S]
        logits, routers = self.logits_and_routers(tokens, positions, cache, capture, images)
        if cache is not None:
            cache.take(tokens)
        return (logits, routers) if output_router_logits else logits

    def logits(self, tokens: torch.Tensor, positions: torch.Tensor, cache=None,
               capture: dict | None = None, images: torch.Tensor | None = None) -> torch.Tensor:
        """The computation without checks: int64 tokens [B, S] at positions [P, S] (P: 1 or B)
        -> logits [B, S, vocab].  `cache`: the static KVCache or anything with its `append`
        (the export's concat cache); it receives the new keys, its length is not moved.
        Without a cache the keys are the queries' own, in position order.  `images`: checked
        pixel values [N, C, H, W] in the model's dtype, one per run of placeholders."""
        return self.logits_and_routers(tokens, positions, cache, capture, images)[0]

    def logits_and_routers(self, tokens: torch.Tensor, positions: torch.Tensor, cache=None,
                           capture: dict | None = None, images: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`logits`, and the router logits [B, S, E] of each "moe" layer, in order."""
        step = self._step(positions, cache)
        h = self.embed(tokens, positions, None if images is None else self.image_features(images, capture))
        if capture is not None:
            capture["embed"] = h
        routers = []
        for layer in self.layers:
            h, parts = layer(h, step, capture is not None)
            if "router" in parts:
                routers.append(parts["router"])
            if capture is not None:
                capture |= {f"layers.{layer.index}.{name}": value for name, value in parts.items()}
        h = self.final_norm(h)
        logits = self.head(h)
        if capture is not None:
            capture |= {"final_norm": h, "logits": logits}
        return logits, routers

    def image_features(self, images: torch.Tensor, capture: dict | None = None) -> torch.Tensor:
        """pixel values [N, C, H, W] -> the projected features [N, T, d_model] that replace the
        placeholders; the tower runs on the model's attention kernel."""
        projected = self.projector(self.vision(images, self.attn_impl, capture))
        if capture is not None:
            capture["projector"] = projected
        return projected

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """final-normed h [B, S, d_model] -> logits [B, S, vocab]; times `logit_scale` in the
        logits' dtype (transformers `CohereForCausalLM`: `logits * self.logit_scale`; PaLM's
        d_model^-0.5), then the final softcap (Gemma 2, HF `Gemma2ForCausalLM`) in float32 at
        least, as the norms."""
        logits = self.lm_head(h)  # [B, S, d_model] @ [d_model, vocab]
        if self.config.logit_scale != 1.0:
            logits = logits * self.config.logit_scale
        cap = self.config.final_logit_softcap
        return logits if cap is None else softcap(upcast(logits), cap).to(logits.dtype)

    def _step(self, positions: torch.Tensor, cache) -> Step:
        """What the layers share: cos, sin once per distinct Rope of the plan (Gemma 3's local
        and global RoPE: two), the score biases (each built once per distinct mask and key
        positions, on first use) for the kernel the config runs on."""
        ropes = {rope: rope_cos_sin(rope, positions, self.dtype, self.constants) for rope in self.ropes}
        kernel = kernel_of(self.config, self.attn_impl)
        biases = ScoreBiases(self.constants, positions, self.dtype, kernel, cached=cache is not None)
        return Step(positions, ropes, biases, cache, kernel)

    @torch.no_grad()
    def decode(self, tokens, prompt_len: int, *, pixel_values=None) -> torch.Tensor:
        """Logits [B, S, vocab]: one prefill of the first `prompt_len` tokens (and the images,
        whose placeholders must all be in it), then one token at a time through a KV cache
        (teacher-forced).  Step t's logits are `forward`'s on tokens 0..t: the whole
        sequence's but for LongRoPE (spec/MATH.md, "Decode")."""
        tokens = check_tokens(self.config, tokens, device=self.device)
        if not 1 <= prompt_len <= tokens.shape[1]:
            raise ValueError(f"prompt_len must be in [1, {tokens.shape[1]}], got {prompt_len}")
        images = check_images(self.config, tokens, pixel_values, prompt_len=prompt_len, device=self.device,
                              dtype=self.dtype)
        cache = self.new_cache(tokens.shape[0], capacity=tokens.shape[1])
        steps = [self(tokens[:, :prompt_len], cache=cache, pixel_values=images)]
        for t in range(prompt_len, tokens.shape[1]):
            steps.append(self(tokens[:, t : t + 1], cache=cache))
        return torch.cat(steps, dim=1)

    def loss(self, tokens, *, pixel_values=None) -> torch.Tensor:
        """impl_numpy.loss: the mean next-token cross-entropy over the B * (S - 1) targets but
        the image placeholders, plus PaLM's logit z-loss over those rows and a mixture's
        auxiliary losses over all S positions; float32 at least."""
        return self.loss_parts(tokens, pixel_values=pixel_values)["loss"]

    def loss_parts(self, tokens, *, pixel_values=None) -> dict[str, torch.Tensor]:
        """The loss and its parts for tokens [B, S] (`objective`), from one forward over all S
        tokens: position t predicts token t + 1, and the routers see every position, as the
        golden's `loss` (and transformers' `labels=` loss with `output_router_logits`)."""
        tokens = check_tokens(self.config, tokens, device=self.device)
        if tokens.shape[1] < 2:
            raise ValueError(f"loss needs sequences of at least 2 tokens, got {tokens.shape[1]}")
        logits, routers = self(tokens, pixel_values=pixel_values, output_router_logits=True)  # [B, S, V], [B, S, E]
        scored = scored_targets(self.config, tokens[:, 1:])  # [B, S-1], None: every target
        if scored is not None and not bool(scored.any()):
            raise ValueError("loss has no target: every next token is an image placeholder")
        return self.objective(logits[:, :-1], tokens[:, 1:], routers)

    def objective(self, logits: torch.Tensor, targets: torch.Tensor, routers: list[torch.Tensor]
                  ) -> dict[str, torch.Tensor]:
        """The loss and its parts ("ce", PaLM's "logit_z_loss", a mixture's "aux", "z_loss",
        "expert_load": impl_torch/objective.py) from logits [B, T, V], their targets [B, T] and
        the router logits of the forward that made them (its `output_router_logits`; none
        without "moe" layers).  The trainer (train/loop.py) calls it on its own forward
        through DDP / FSDP."""
        return objective(self.config, logits, targets, routers)


# --- the golden's functional API -------------------------------------------------------------
# Each call builds a model from the NumPy params, runs it without autograd and drops it; to
# train, keep a Transformer and call it (or its `loss`).


def check_inputs(config: ModelConfig, tokens, pixel_values, past_len: int = 0) -> None:
    """What the golden checks before it reads the params: the features, the tokens, the images."""
    check_supported(config, BACKEND, FEATURES)
    check_images(config, check_tokens(config, tokens, past_len=past_len), pixel_values)


@torch.no_grad()
def forward(config: ModelConfig, params: dict, tokens, *, pixel_values=None, cache: KVCache | None = None,
            capture: dict | None = None, dtype: torch.dtype = torch.float32, device=None,
            attn_impl: str = "sdpa") -> torch.Tensor:
    """impl_numpy.forward in torch: logits [B, S, vocab] (features, then tokens and images, then
    params are checked, as the golden does)."""
    check_inputs(config, tokens, pixel_values, past_len=0 if cache is None else cache.length)
    model = Transformer.from_canonical(config, params, dtype=dtype, device=device, attn_impl=attn_impl)
    return model(tokens, cache=cache, capture=capture, pixel_values=pixel_values)


@torch.no_grad()
def decode(config: ModelConfig, params: dict, tokens, prompt_len: int, *, pixel_values=None,
           dtype: torch.dtype = torch.float32, device=None, attn_impl: str = "sdpa") -> torch.Tensor:
    """impl_numpy.decode in torch: prefill `prompt_len` tokens (and the images), then one at a time."""
    check_inputs(config, tokens, pixel_values)
    model = Transformer.from_canonical(config, params, dtype=dtype, device=device, attn_impl=attn_impl)
    return model.decode(tokens, prompt_len, pixel_values=pixel_values)


@torch.no_grad()
def loss(config: ModelConfig, params: dict, tokens, *, pixel_values=None, dtype: torch.dtype = torch.float32,
         device=None, attn_impl: str = "sdpa") -> torch.Tensor:
    """impl_numpy.loss in torch, as a 0-d tensor."""
    check_inputs(config, tokens, pixel_values)
    model = Transformer.from_canonical(config, params, dtype=dtype, device=device, attn_impl=attn_impl)
    return model.loss(tokens, pixel_values=pixel_values)
