"""Text generation from a training checkpoint: one prefill of the prompt, then one token at a
time through impl_torch's KV cache.

Decoding: greedy (`temperature=0`), or sampling from softmax(logits / temperature) restricted
to the `top_k` most likely tokens and to the smallest set whose probability reaches `top_p`
(nucleus sampling; Holtzman et al. 2020), in that order.  Draws come from a torch.Generator
seeded with `seed`, so a seed gives the same text on the same machine and torch build.

With an image (a vision run's checkpoint, `lmref generate --image`): the prompt is the image's
placeholders, then the text given; the prefill fills them with the image's features, and
decoding stops at the caption's end (train/captions.py CAPTION_END).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lmref.impl_torch import Transformer
from lmref.train import checkpoint
from lmref.train.distributed import DEVICES
from lmref.train.errors import TrainError
from lmref.train.settings import check_seed
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


def without_placeholder(config, logits: torch.Tensor) -> torch.Tensor:
    """Last-position logits [B, V] with a vision model's image placeholder never chosen: it means
    "an image's features go here", which a decode step cannot take (LLaVA's own generation never
    meets it, its image index -200 lies outside the vocabulary)."""
    if config.vision is None:
        return logits
    return logits.index_fill(-1, torch.tensor([config.vision.image_token_id], device=logits.device), float("-inf"))


def next_token(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
               generator: torch.Generator | None) -> torch.Tensor:
    """Token ids [B] from last-position logits [B, V]."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(scaled_logits(logits, temperature), top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def scaled_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(logits - their max) / temperature, float32, for any temperature > 0: the largest logits
    become 0 and the others <= 0, so a tiny temperature gives -inf for the others (its softmax
    one-hot on the argmax, ties shared), never inf - inf = NaN.  The largest stay 0 exactly:
    0 / a temperature that float32 rounds to 0 (under 1e-45) would be NaN too."""
    shifted = logits.float() - logits.float().amax(dim=-1, keepdim=True)
    return torch.where(shifted == 0, shifted, shifted / temperature)


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
    """A torch.Generator seeded with `seed` (settings.check_seed: the rule of train and shapes
    too), or freshly and nondeterministically when None."""
    if seed is not None:
        check_seed(seed)
    generator = torch.Generator(device) if device is not None else torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


@torch.no_grad()
def generate(model: Transformer, prompt: list[int], max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             pixel_values=None, stop: int | None = None) -> list[int]:
    """`max_new_tokens` token ids following `prompt`, decoded incrementally with a KV cache.
    `pixel_values` [N, C, H, W]: the images whose features fill the prompt's placeholders (in
    the prefill); `stop`: a token after which generation ends early (it is returned)."""
    total = check_request(prompt, max_new_tokens, model.config.max_seq_len, temperature, top_k, top_p)
    generator = seeded_generator(seed, model.device)
    cache = model.new_cache(1, capacity=total)
    logits = model(torch.tensor([prompt], device=model.device), cache=cache, pixel_values=pixel_values)[:, -1]  # [1, V]
    out: list[int] = []
    for i in range(max_new_tokens):
        token = next_token(without_placeholder(model.config, logits), temperature, top_k, top_p, generator)  # [1]
        out.append(int(token))
        if out[-1] == stop or i + 1 == max_new_tokens:
            break
        logits = model(token[:, None], cache=cache)[:, -1]
    return out


def image_prompt(model, tokenizer, text: str) -> list[int]:
    """A captioning prompt as a vision run trains on (train/captions.py): the image's
    placeholders first, then `text` (possibly empty), whose continuation is the caption."""
    v = model.config.vision
    return [v.image_token_id] * v.tokens_per_image + [int(i) for i in tokenizer.encode(text)]


def check_vision_model(model, where: str) -> None:
    """TrainError unless the model (a Transformer, or an export's session) has a vision tower
    (what --image needs)."""
    if model.config.vision is None:
        raise TrainError(f"--image: {where} is a text-only model ({model.config.name}: its config has no vision "
                         "tower); describing an image needs a vision run's checkpoint (lmref train --arch "
                         "llava) or its export")


def load_generator(path: str | Path, device: str = "auto"):
    """(model in eval mode, tokenizer, checkpoint directory) of a training checkpoint."""
    if device not in DEVICES:
        raise TrainError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is available")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    directory, config, params, state = checkpoint.load_model(path)
    tokenizer = load_tokenizer(directory, state.get("tokenizer", {}), config.vocab_size)
    model = Transformer.from_canonical(config, params, device=torch.device(device)).eval()
    return model, tokenizer, directory
