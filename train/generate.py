"""Text generation from a training checkpoint: one prefill of the prompt, then one token at a
time through impl_torch's KV cache.

Decoding: greedy (`temperature=0`), or sampling from softmax(logits / temperature) restricted
to the `top_k` most likely tokens and to the smallest set whose probability reaches `top_p`
(nucleus sampling; Holtzman et al. 2020), in that order.  Draws come from a torch.Generator
seeded with `seed`, so a seed gives the same text on the same machine and torch build.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lmref.impl_torch import Transformer
from lmref.train import checkpoint
from lmref.train.errors import TrainError
from lmref.train.tokenizer import load_tokenizer


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Logits [B, V] with the tokens outside the top-k / top-p set at -inf."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each one
        drop_sorted = before >= top_p  # the top token always stays (before == 0)
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
               generator: torch.Generator | None) -> torch.Tensor:
    """Token ids [B] from last-position logits [B, V]."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise TrainError(f"--temperature must be a finite number >= 0 (0: greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise TrainError(f"--top-k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise TrainError(f"--top-p must be in (0, 1], got {top_p}")


def check_request(prompt: list[int], max_new_tokens: int, max_seq_len: int, temperature: float,
                  top_k: int | None, top_p: float | None) -> int:
    """Refuse a generation request that cannot run; return its total length, prompt + new tokens.
    Shared by the torch loop here and the ONNX loop (export/generate.py)."""
    check_sampling(temperature, top_k, top_p)
    if max_new_tokens < 1:
        raise TrainError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if not prompt:
        raise TrainError("the prompt is empty: the model has no start token, give it some text")
    total = len(prompt) + max_new_tokens
    if total > max_seq_len:
        raise TrainError(f"prompt ({len(prompt)} tokens) + --max-new-tokens ({max_new_tokens}) = {total} "
                         f"exceeds the model's context max_seq_len {max_seq_len}")
    return total


def seeded_generator(seed: int | None, device=None) -> torch.Generator:
    """A torch.Generator seeded with `seed`, or freshly and nondeterministically when None."""
    generator = torch.Generator(device) if device is not None else torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


@torch.no_grad()
def generate(model: Transformer, prompt: list[int], max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None) -> list[int]:
    """`max_new_tokens` token ids following `prompt`, decoded incrementally with a KV cache."""
    total = check_request(prompt, max_new_tokens, model.config.max_seq_len, temperature, top_k, top_p)
    generator = seeded_generator(seed, model.device)
    cache = model.new_cache(1, capacity=total)
    logits = model(torch.tensor([prompt], device=model.device), cache=cache)[:, -1]  # [1, V]
    out: list[int] = []
    for i in range(max_new_tokens):
        token = next_token(logits, temperature, top_k, top_p, generator)  # [1]
        out.append(int(token))
        if i + 1 < max_new_tokens:
            logits = model(token[:, None], cache=cache)[:, -1]
    return out


def load_generator(path: str | Path, device: str = "auto"):
    """(model in eval mode, tokenizer, checkpoint directory) of a training checkpoint."""
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is available")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    directory, config, params, state = checkpoint.load_model(path)
    tokenizer = load_tokenizer(directory, state.get("tokenizer", {}))
    model = Transformer.from_canonical(config, params, device=torch.device(device)).eval()
    return model, tokenizer, directory
