"""genai_config.json: what onnxruntime-genai's `Model` reads beside a decoder graph, written by
`lmref export --ort-contrib --genai-eos ID` (docs/onnx.md "onnxruntime-genai").

The generator (onnxruntime-genai 0.18, src/models/decoder_only.cpp and kv_cache.cpp) feeds the
graph `input_ids`, `attention_mask`, `position_ids` and one past key and value per layer by the
names the config gives, reads `logits` and the presents (a mixture of experts' router outputs it
leaves unread), and with `past_present_share_buffer` binds each layer's past and present to one
buffer of `max_length` positions, in which the attention writes the new keys at their slots
itself.  Only GroupQueryAttention does that (export/contrib_gqa.py), so the file is written only
where every layer's attention became one: a graph with a Concat cache (a sliding layer keeps its
last W - 1 entries, a layer the fusion leaves as traced) would take the buffer's full length
for its past.  The graph takes the generator's `attention_mask` over the buffer so far [B, T] and
its `position_ids` (cumsum of the mask - 1 on real tokens: the graph's own convention,
docs/onnx.md "Interface").

The generator needs an end token inside the vocabulary (`eos_token_id` must be in [0,
vocab_size), and an empty list falls back to `pad_token_id`, which is then checked alike), and
reads logits of exactly `vocab_size` columns; it stops a row at that token.  An lmref model has
no end token, so the caller names one (`--genai-eos`): the byte tokenizer's 0, NUL, never
occurs in text.  The tokenizer is the caller's too: onnxruntime-genai reads Hugging Face
tokenizer files, which a byte tokenizer has none of, so ids go in and come out as ids
(og.Generator.append_tokens, get_sequence).
"""

from __future__ import annotations

from lmref.export.decoder import KV
from lmref.export.errors import GenaiError
from lmref.export.graph_edit import GQA_FUSION
from lmref.spec.config import ModelConfig

GENAI_CONFIG_FILE = "genai_config.json"


def check_genai_request(config: ModelConfig, eos: int, ort_contrib: bool) -> None:
    """GenaiError, before anything is traced, for what the config alone rules out."""
    if not ort_contrib:
        raise GenaiError("--genai-eos goes with --ort-contrib: the plain graph keeps its KV cache by Concat, "
                         "which the generator's shared KV buffer does not fit")
    if config.vision is not None:
        raise GenaiError("--genai-eos: a vision tower's decoder takes inputs_embeds from embed.onnx, which "
                         "onnxruntime-genai's decoder-only generator does not run")
    if not 0 <= eos < config.vocab_size:
        raise GenaiError(f"--genai-eos {eos}: the end token must be an id of the vocabulary, in [0, "
                         f"{config.vocab_size})")


def check_genai_graph(config: ModelConfig, fused: dict[str, int] | None) -> None:
    """GenaiError unless every layer's attention became GroupQueryAttention (`fused`: the
    decoder's contrib fusions, export.json `ort_contrib`; None for a plain graph)."""
    if fused is None:
        raise GenaiError("--genai-eos: the graph was not traced with the contrib ops (--ort-contrib)")
    attention = fused.get(GQA_FUSION, 0)
    if attention != config.n_layers:
        raise GenaiError(f"--genai-eos: {attention} of {config.n_layers} layers' attention became "
                         "GroupQueryAttention (docs/onnx.md says when it does); the others keep a Concat cache, "
                         "which onnxruntime-genai's shared KV buffer does not fit")


def genai_config(config: ModelConfig, filename: str, eos: int) -> dict:
    """The genai_config.json of the decoder graph `filename` (the names: export/decoder.py)."""
    return {
        "model": {
            "bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos,
            "context_length": config.max_seq_len, "type": "llama",  # a decoder-only graph (module docstring)
            "vocab_size": config.vocab_size,
            "decoder": {
                "filename": filename, "session_options": {"provider_options": []},
                "head_size": config.head_dim, "hidden_size": config.d_model,
                "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads,
                "num_hidden_layers": config.n_layers,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids", "past_key_names": f"past_key_values.%d.{KV[0]}",
                           "past_value_names": f"past_key_values.%d.{KV[1]}"},
                "outputs": {"logits": "logits", "present_key_names": f"present.%d.{KV[0]}",
                            "present_value_names": f"present.%d.{KV[1]}"},
            },
        },
        "search": {"do_sample": False, "max_length": config.max_seq_len, "num_beams": 1,
                   "past_present_share_buffer": True},
    }
