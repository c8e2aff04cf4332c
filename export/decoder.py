"""The export wrapper: impl_torch's Transformer behind a flat, tensor-only interface with a
concat-style KV cache, one graph for the prefill and every decode step.

    OnnxDecoder(input_ids [B, S], attention_mask [B, T], position_ids [B, S],
                past_key_values [2 * n_layers] x [B, n_kv_heads, P, head_dim])
        -> (logits [B, S, vocab], present.{i}.key, present.{i}.value [B, n_kv_heads, T, head_dim])

with T = P + S.  The first step passes an empty past (P = 0); each later step passes the
presents of the step before.  The wrapper re-implements no step of the model: its forward
is the Transformer's own tensor-only forward (`Transformer.logits`: embedding, the layers
built from the plan, their masks and RoPE, the head) with a ConcatCache in place of the
static cache.  So the export computes exactly the torch twin's math, and a config the
export cannot express is refused by feature name (export/features.py), never traced with a
knob dropped.

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

MoE layers, when the twin gets them, go through impl_torch's blocks like dense ones, as a
static loop over all experts (huggingface/transformers#38518).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lmref.export.features import check_exportable
from lmref.impl_torch import Transformer
from lmref.spec.config import ModelConfig
from lmref.spec.plan import EMPTY_SLOT

DTYPE = torch.float32
# impl_torch's eager attention: torchlib decomposes SDPA into MatMul / Softmax anyway
# (pytorch#149662), and the eager path's explicit GQA expand needs no `enable_gqa` support
# (microsoft/onnxscript#2558).
ATTN_IMPL = "eager"
KV = ("key", "value")


def past_names(n_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kind}" for i in range(n_layers) for kind in KV]


def present_names(n_layers: int) -> list[str]:
    return [f"present.{i}.{kind}" for i in range(n_layers) for kind in KV]


def input_names(n_layers: int) -> list[str]:
    return ["input_ids", "attention_mask", "position_ids", *past_names(n_layers)]


def output_names(n_layers: int) -> list[str]:
    return ["logits", *present_names(n_layers)]


def slot_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] int64 position of each key slot: cumsum(attention_mask) - 1 on real tokens,
    EMPTY_SLOT on padding (the module docstring)."""
    positions = attention_mask.cumsum(-1) - 1  # [B, T]
    return torch.where(attention_mask.bool(), positions, EMPTY_SLOT)


class ConcatCache:
    """impl_torch's KV cache protocol (`append`) for the export: each layer's present is its
    past with the step's keys and values concatenated on the sequence axis, and every slot's
    position comes from `attention_mask` (slot_positions), which covers past and new slots."""

    def __init__(self, past: list[torch.Tensor], attention_mask: torch.Tensor):
        self.past = past
        self.present = list(past)
        self.positions = slot_positions(attention_mask)  # [B, P + S]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor,
               positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """k, v [B, KV, S, hd] -> all keys and values [B, KV, P + S, hd] of `layer` and the
        slots' positions [B, P + S].  The step's `positions` are the last S of those when
        position_ids follow the mask; the mask, not position_ids, says which slots are padding."""
        k = torch.cat([self.past[2 * layer], k], dim=2)  # [B, KV, P + S, hd]
        v = torch.cat([self.past[2 * layer + 1], v], dim=2)
        self.present[2 * layer], self.present[2 * layer + 1] = k, v
        return k, v, self.positions


class OnnxDecoder(nn.Module):
    """A float32 Transformer with eager attention behind the ONNX interface above (the model
    is moved to float32 and set to eager attention in place, as nn.Module.to moves it)."""

    def __init__(self, model: Transformer):
        super().__init__()
        check_exportable(model.config)
        self.model = model.to(DTYPE)
        self.model.attn_impl = ATTN_IMPL
        self.eval()

    @classmethod
    def from_canonical(cls, config: ModelConfig, params: dict[str, np.ndarray]) -> OnnxDecoder:
        check_exportable(config)
        return cls(Transformer.from_canonical(config, params, dtype=DTYPE, attn_impl=ATTN_IMPL))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past_key_values: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        cache = ConcatCache(past_key_values, attention_mask)
        logits = self.model.logits(input_ids, position_ids, cache=cache)  # [B, S, vocab]
        return (logits, *cache.present)


def example_inputs(config: ModelConfig) -> tuple:
    """Inputs to trace with: batch 2, sequence 3, past 5, all different and > 1, so that
    torch.export keeps every axis symbolic (sizes 0 and 1 get specialised: huggingface/optimum#2219,
    pytorch#153955).  The graph
    still runs with past 0 (tests check it)."""
    batch, seq, past = 2, 3, 5
    input_ids = torch.zeros(batch, seq, dtype=torch.int64)
    attention_mask = torch.ones(batch, past + seq, dtype=torch.int64)
    position_ids = torch.arange(past, past + seq)[None].expand(batch, seq).contiguous()  # [B, S]
    shape = (batch, config.n_kv_heads, past, config.head_dim)
    past_kv = [torch.zeros(shape, dtype=DTYPE) for _ in range(2 * config.n_layers)]
    return input_ids, attention_mask, position_ids, past_kv


def dynamic_shapes(config: ModelConfig) -> dict:
    """Dynamic axes for torch.export: batch, sequence and past are named dims; the mask's
    length (past + sequence) is left to export to derive (named relations between
    dims fail, pytorch#172903; Dim.DYNAMIC is the advice of pytorch#172561)."""
    from torch.export import Dim

    batch, seq, past = Dim("batch"), Dim("sequence"), Dim("past_sequence")
    return {
        "input_ids": {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: Dim.DYNAMIC},
        "position_ids": {0: batch, 1: seq},
        "past_key_values": [{0: batch, 2: past}] * (2 * config.n_layers),
    }
