"""The export wrapper: impl_torch's Transformer behind a flat, tensor-only interface with a
concat-style KV cache, one graph for the prefill and every decode step.

    OnnxDecoder(input_ids [B, S], attention_mask [B, T], position_ids [B, S],
                past_key_values [2 * n_layers] x [B, n_kv_heads, P, head_dim])
        -> (logits [B, S, vocab], present.{i}.key, present.{i}.value [B, n_kv_heads, T, head_dim])

with T = P + S.  The first step passes an empty past (P = 0); each later step passes the
presents of the step before.  Everything depends on the inputs only through tensor ops:

- the RoPE angles are computed from `position_ids` inside the graph (no cos/sin table sized
  by the example input: quic/efficient-transformers#1178);
- the masks are built from `attention_mask` (export/masks.py);
- the cache grows by `torch.cat` (no StaticCache object crosses the boundary:
  pytorch#153998, pytorch#152465).

MoE layers, when the export gets them, go through impl_torch's blocks like dense ones, as a
static loop over all experts (huggingface/transformers#38518); export/support.py refuses
them until then.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from export.masks import score_bias
from export.support import check_exportable
from impl_torch import Transformer
from impl_torch.rope import rope_cos_sin
from spec.config import ModelConfig

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


class ConcatCache:
    """What impl_torch's Attention needs of a cache (`append`), for the export: each layer's
    present is its past with the step's keys and values concatenated on the sequence axis."""

    def __init__(self, past: list[torch.Tensor]):
        self.past = past
        self.present = list(past)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v [B, KV, S, hd] -> all keys and values [B, KV, P + S, hd] of `layer`."""
        k = torch.cat([self.past[2 * layer], k], dim=2)  # [B, KV, P + S, hd]
        v = torch.cat([self.past[2 * layer + 1], v], dim=2)
        self.present[2 * layer], self.present[2 * layer + 1] = k, v
        return k, v


class OnnxDecoder(nn.Module):
    """A float32 Transformer (eager attention) with the ONNX interface above."""

    def __init__(self, model: Transformer):
        super().__init__()
        check_exportable(model.config)
        self.model = model.to(DTYPE)
        self.config = model.config
        self.eval()

    @classmethod
    def from_canonical(cls, config: ModelConfig, params: dict[str, np.ndarray]) -> OnnxDecoder:
        check_exportable(config)
        return cls(Transformer.from_canonical(config, params, dtype=DTYPE, attn_impl=ATTN_IMPL))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past_key_values: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        c, m = self.config, self.model
        kinds = c.layer_attn_kinds
        biases = {kind: score_bias(c, kind, attention_mask, position_ids, DTYPE) for kind in dict.fromkeys(kinds)}
        rope = rope_cos_sin(c, position_ids, DTYPE) if c.position == "rope" else None  # [B, 1, S, r/2] each
        cache = ConcatCache(past_key_values)
        h = m.embed(input_ids, position_ids)  # [B, S, d_model]
        for i, (layer, kind) in enumerate(zip(m.layers, kinds)):
            h = layer(h, rope, biases[kind], cache, i, ATTN_IMPL, None)
        logits = m.lm_head(m.final_norm(h))  # [B, S, vocab]
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
