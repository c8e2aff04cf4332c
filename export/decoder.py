"""The export wrapper: impl_torch's Transformer behind a flat, tensor-only interface with a
concat-style KV cache, one graph for the prefill and every decode step.

    OnnxDecoder(input_ids [B, S], attention_mask [B, T], position_ids [B, S],
                past_key_values [2 * n_layers] x [B, n_kv_heads, P, head_dim])
        -> (logits [B, S, vocab], present.{i}.key, present.{i}.value [B, n_kv_heads, T, head_dim])

with T = P + S.  The first step passes an empty past (P = 0); each later step passes the
presents of the step before.  A config with a vision tower exports `OnnxEmbedsDecoder`
instead, the same graph with `inputs_embeds [B, S, d_model]` (the token embedding's raw
lookup, the image rows merged in by the caller: export/vision_graphs.py) in place of
`input_ids`, as the decoders of vision-language models take in ONNX.  A sliding layer of
window W keeps only its last W - 1 entries: its past is [B, n_kv_heads, min(P, W - 1),
head_dim] and its present [B, n_kv_heads, min(min(P, W - 1) + S, W - 1), head_dim]
(ConcatCache), so the memory it feeds back stops growing at the window.

The wrapper re-implements no step of the model: its forward is the Transformer's own
tensor-only forward (`Transformer.logits`: embedding, the layers built from the plan, their
masks and RoPE, the head) with a ConcatCache in place of the static cache.  So the export
computes exactly the torch twin's math, and a config the export cannot express is refused
by feature name (export/features.py), never traced with a knob dropped.

Padding is expressed through positions, the Hugging Face convention (`attention_mask` 1 on
real tokens, 0 on padding; `position_ids = attention_mask.cumsum(-1) - 1` in transformers'
`prepare_inputs_for_generation`): key slot t of a row holds the position
cumsum(attention_mask)[t] - 1 where attention_mask[t] is 1 and EMPTY_SLOT (-1,
spec/plan.py) where it is 0, so the masks (impl_torch/masks.py) hide padding like any empty
slot, and causality, sliding windows, chunks and ALiBi distances are measured between real
tokens.  Everything depends on the inputs only through tensor ops:

- the RoPE angles are computed from `position_ids` inside the graph (no cos/sin table sized
  by the example input: quic/efficient-transformers#1178);
- the masks are built from the slots' positions, the sliding window as an explicit band
  (decomposed exports have dropped the window silently: sonos/tract#2323);
- the cache grows by `torch.cat` (no StaticCache object crosses the boundary:
  pytorch#153998, pytorch#152465).

A mixture-of-experts layer routes inside the graph, on the tokens it is given: the twin's
"dense" dispatch (impl_torch/moe.py, set on the wrapped model) takes TopK of the router's
scores, scatters the chosen weights into a dense [tokens, experts] matrix and runs every
expert on every token (static shapes: the data-dependent `nonzero` / per-expert slices of
the other dispatches stop torch.export, huggingface/transformers#38518, and a trace of them
would bake the example's routing in: Tencent/YOLO-Master#74).  Each "moe" layer i adds two
outputs after the presents (moe_output_names):

    router_logits.{i}     [B, S, n_experts] float32  the router's logits (capture `layers.{i}.router`)
    selected_experts.{i}  [B, S, k] int64            the very TopK indices the layer scattered

so a consumer sees what the graph chose (the conformance `routing` capability reports it),
and the load-balancing loss, a function of the router logits, is computed from the graph's
outputs (export/onnx_adapter.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from lmref.export.features import check_exportable
from lmref.impl_torch import Transformer
from lmref.impl_torch.moe import MoE
from lmref.spec.captures import moe_layers
from lmref.spec.config import ModelConfig
from lmref.spec.plan import EMPTY_SLOT, layer_plan

DTYPE = torch.float32
# impl_torch's eager attention: torchlib decomposes SDPA into MatMul / Softmax anyway
# (pytorch#149662), and the eager path's explicit GQA expand needs no `enable_gqa` support
# (microsoft/onnxscript#2558).
ATTN_IMPL = "eager"
# impl_torch's static-shape MoE dispatch: TopK, scatter, every expert on every token.
MOE_DISPATCH = "dense"
KV = ("key", "value")
# The symbolic names of the past's length: every layer's that keeps all its past, and the
# sliding layers' (min(past_sequence, W - 1), window_pasts).
PAST_DIM, WINDOW_PAST_DIM = "past_sequence", "window_past_sequence"


def past_names(n_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kind}" for i in range(n_layers) for kind in KV]


def present_names(n_layers: int) -> list[str]:
    return [f"present.{i}.{kind}" for i in range(n_layers) for kind in KV]


def input_names(n_layers: int, first: str = "input_ids") -> list[str]:
    """The decoder's inputs: `first` is "input_ids", or "inputs_embeds" (graph_input_names)."""
    return [first, "attention_mask", "position_ids", *past_names(n_layers)]


def first_input(config: ModelConfig) -> str:
    """What the decoder of `config` takes: the tokens, or with a vision tower their embeddings."""
    return "input_ids" if config.vision is None else "inputs_embeds"


def graph_input_names(config: ModelConfig) -> list[str]:
    """Every input of the decoder graph of `config`, in order."""
    return input_names(config.n_layers, first_input(config))


def output_names(n_layers: int) -> list[str]:
    """The decoder's outputs: what Optimum and onnxruntime-genai read."""
    return ["logits", *present_names(n_layers)]


def router_names(config: ModelConfig) -> list[str]:
    return [f"router_logits.{i}" for i in moe_layers(config)]


def expert_names(config: ModelConfig) -> list[str]:
    return [f"selected_experts.{i}" for i in moe_layers(config)]


def moe_output_names(config: ModelConfig) -> list[str]:
    """The "moe" layers' outputs after the presents (module docstring); none for a dense model."""
    return [*router_names(config), *expert_names(config)]


def graph_output_names(config: ModelConfig) -> list[str]:
    """Every output of the graph of `config`, in order."""
    return [*output_names(config.n_layers), *moe_output_names(config)]


def slot_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] int64 position of each key slot: cumsum(attention_mask) - 1 on real tokens,
    EMPTY_SLOT on padding (the module docstring)."""
    positions = attention_mask.cumsum(-1) - 1  # [B, T]
    return torch.where(attention_mask.bool(), positions, EMPTY_SLOT)


def window_pasts(config: ModelConfig) -> list[int | None]:
    """Per layer, the most past entries it keeps: W - 1 for a sliding layer of window W (the
    query sees its own key and the W - 1 before it: impl_torch/cache.py), None for a layer
    that keeps every past entry."""
    return [plan.mask.window - 1 if plan.mask.kind == "sliding" else None for plan in layer_plan(config)]


def last(x: torch.Tensor, n: int) -> torch.Tensor:
    """The last min(n, T) entries of x [B, KV, T, hd] on the sequence axis (x[..., -0:, :]
    would be all of them, hence the explicit empty slice for n = 0)."""
    return x[:, :, -n:] if n else x[:, :, x.shape[2]:]


class ConcatCache:
    """impl_torch's KV cache protocol (`append`) for the export.  Each layer reads its past
    with the step's keys and values concatenated on the sequence axis.  A layer that keeps
    everything presents all of them, at the positions of every slot of `attention_mask`
    (slot_positions); a sliding layer of window W presents only the last W - 1
    (window_pasts), and its past, its concat and their positions are the LAST entries of
    `attention_mask`: past [B, KV, Pw, hd] holds the Pw slots before the step's S."""

    def __init__(self, past: list[torch.Tensor], attention_mask: torch.Tensor, config: ModelConfig):
        self.past = past
        self.present = list(past)
        self.positions = slot_positions(attention_mask)  # [B, P + S]
        self.keep = window_pasts(config)
        self.window_positions: torch.Tensor | None = None  # [B, Pw + S], built by the first sliding layer

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor,
               positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """k, v [B, KV, S, hd] -> the keys and values `layer` reads [B, KV, P + S, hd] (Pw + S
        for a sliding layer) and their slots' positions [B, P + S] (Pw + S).  The step's
        `positions` are the last S of those when position_ids follow the mask; the mask, not
        position_ids, says which slots are padding."""
        k = torch.cat([self.past[2 * layer], k], dim=2)  # [B, KV, P + S, hd]
        v = torch.cat([self.past[2 * layer + 1], v], dim=2)
        keep = self.keep[layer]
        if keep is None:
            self.present[2 * layer], self.present[2 * layer + 1] = k, v
            return k, v, self.positions
        if self.window_positions is None:  # every sliding layer has the past of the same Pw slots
            self.window_positions = self.positions[:, -k.shape[2]:]  # [B, Pw + S]
        self.present[2 * layer], self.present[2 * layer + 1] = last(k, keep), last(v, keep)  # [B, KV, <= W - 1, hd]
        return k, v, self.window_positions


@contextlib.contextmanager
def recorded_choices(model: Transformer) -> Iterator[list[torch.Tensor]]:
    """A list that receives, in layer order, the chosen experts [B, S, k] each "moe" layer's
    own `route` (impl_torch/moe.py) returns during the block, for the dispatch to scatter:
    the graph outputs that very TopK.  Each layer's `route` is wrapped for the block only."""
    chosen: list[torch.Tensor] = []
    layers = [layer.mlp for layer in model.layers if isinstance(layer.mlp, MoE)]

    def recording(route):
        def wrapped(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            experts, weights = route(z)  # [..., k] each
            chosen.append(experts)
            return experts, weights
        return wrapped

    for moe in layers:
        moe.route = recording(moe.route)  # an instance attribute shadows the method
    try:
        yield chosen
    finally:
        for moe in layers:
            del moe.route


class OnnxDecoder(nn.Module):
    """A float32 Transformer with eager attention and the "dense" MoE dispatch behind the
    ONNX interface above (the model is moved to float32 and set to eager attention and dense
    dispatch in place, as nn.Module.to moves it)."""

    takes_embeds = False  # OnnxEmbedsDecoder: inputs_embeds in place of input_ids

    def __init__(self, model: Transformer):
        super().__init__()
        check_exportable(model.config)
        if (model.config.vision is not None) != self.takes_embeds:
            wanted = "OnnxEmbedsDecoder (inputs_embeds)" if model.config.vision else "OnnxDecoder (input_ids)"
            raise ValueError(f"config {model.config.name!r} {'has a' if model.config.vision else 'has no'} vision "
                             f"tower: its decoder graph is {wanted}, not {type(self).__name__} (OnnxDecoder.of picks it)")
        self.model = model.to(DTYPE)
        self.model.attn_impl = ATTN_IMPL
        self.model.moe_dispatch = MOE_DISPATCH
        self.eval()

    @classmethod
    def from_canonical(cls, config: ModelConfig, params: dict[str, np.ndarray]) -> OnnxDecoder:
        check_exportable(config)
        return cls(Transformer.from_canonical(config, params, dtype=DTYPE, attn_impl=ATTN_IMPL))

    @staticmethod
    def of(model: Transformer) -> OnnxDecoder:
        """The decoder wrapper `model`'s config exports: OnnxEmbedsDecoder with a vision tower."""
        return (OnnxDecoder if model.config.vision is None else OnnxEmbedsDecoder)(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past_key_values: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """(logits, *presents, *router logits, *selected experts): graph_output_names' order."""
        cache = ConcatCache(past_key_values, attention_mask, self.model.config)
        with recorded_choices(self.model) as chosen:
            logits, routers = self.model.logits_and_routers(input_ids, position_ids, cache=cache)  # [B, S, vocab]
        if len(chosen) != len(routers):  # each "moe" layer routes once, through its `route`
            raise RuntimeError(f"recorded {len(chosen)} expert choices for {len(routers)} MoE layers: "
                               "impl_torch's MoE no longer routes through `route`")
        return (logits, *cache.present, *routers, *chosen)


@contextlib.contextmanager
def lookup_given(model: Transformer) -> Iterator[None]:
    """During the block, the token embedding's lookup (`embed.tokens`, an nn.Embedding) returns
    what it is given: the looked-up rows themselves, so that the twin's own Embedding applies
    everything after the lookup (BLOOM's norm, Gemma's scale, learned positions; spec/MATH.md
    "Vision": after the merge) to inputs_embeds.  The table stays a Parameter (a tied head
    reads it); its forward is shadowed by an instance attribute for the block only."""
    lookup = model.embed.tokens
    lookup.forward = lambda rows: rows
    try:
        yield
    finally:
        del lookup.forward


class OnnxEmbedsDecoder(OnnxDecoder):
    """OnnxDecoder taking inputs_embeds [B, S, d_model], the raw lookup of the tokens with the
    image rows merged in (export/vision_graphs.py), in place of input_ids."""

    takes_embeds = True

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past_key_values: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        with lookup_given(self.model):
            return super().forward(inputs_embeds, attention_mask, position_ids, past_key_values)


def example_inputs(config: ModelConfig) -> tuple:
    """Inputs to trace with: batch 2, sequence 3, past 5 (4 for the sliding layers' pasts),
    all different and > 1, so that torch.export keeps every axis symbolic (sizes 0 and 1 get
    specialised: huggingface/optimum#2219, pytorch#153955).  The graph still runs with past 0
    and with sliding pasts of any window (tests check it)."""
    batch, seq, past, window_past = 2, 3, 5, 4
    input_ids = torch.zeros(batch, seq, dtype=torch.int64)
    if config.vision is not None:  # OnnxEmbedsDecoder's inputs_embeds [B, S, d_model]
        input_ids = torch.zeros(batch, seq, config.d_model, dtype=DTYPE)
    attention_mask = torch.ones(batch, past + seq, dtype=torch.int64)
    position_ids = torch.arange(past, past + seq)[None].expand(batch, seq).contiguous()  # [B, S]
    lengths = [past if keep is None else window_past for keep in window_pasts(config) for _ in KV]
    past_kv = [torch.zeros((batch, config.n_kv_heads, n, config.head_dim), dtype=DTYPE) for n in lengths]
    return input_ids, attention_mask, position_ids, past_kv


def dynamic_shapes(config: ModelConfig) -> dict:
    """Dynamic axes for torch.export: batch, sequence, past and the sliding layers' past are
    named dims; the mask's length (past + sequence) is left to export to derive (named
    relations between dims fail, pytorch#172903; Dim.DYNAMIC is the advice of pytorch#172561)."""
    from torch.export import Dim

    batch, seq, past, window_past = Dim("batch"), Dim("sequence"), Dim(PAST_DIM), Dim(WINDOW_PAST_DIM)
    return {  # in the order of the inputs: the exporter names the axes by position
        first_input(config): {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: Dim.DYNAMIC},
        "position_ids": {0: batch, 1: seq},
        "past_key_values": [{0: batch, 2: past if keep is None else window_past}
                            for keep in window_pasts(config) for _ in KV],
    }
