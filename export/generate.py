"""Text generation with the exported graph: one prefill of the prompt from an empty past,
then one token per step, each step fed the presents of the step before.

Decoding is train/generate.py's (`next_token`: greedy at temperature 0, else top-k / top-p
sampling from a seeded torch.Generator), so for a checkpoint and its export, the same
settings and seed give the same tokens as `lmref generate --checkpoint` as long as the
logits agree to float32 rounding (greedy decoding: tests/test_export_generate.py).

A bundle with a vision tower opens as the chain of its three graphs (export/multimodal.py);
`generate(session, prompt, n, pixel_values=images, temperature=0)` decodes greedily after a
prefill whose prompt holds `tokens_per_image` image placeholders per image (the images
[N, C, H, W] float, normalised as the model was trained on them), checked as every backend
checks images (spec/vision.py `check_images`).  Each step feeds the token it chose; a model
is never given its image placeholder (train/generate.py `without_placeholder`: a placeholder
needs an image, and a decode step takes none); `stop` ends a caption at its end of line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmref.export.bundle import Bundle, open_bundle
from lmref.export.decoder import present_names
from lmref.export.errors import BundleError
from lmref.export.exporter import MANIFEST_FILE
from lmref.export.multimodal import open_chain
from lmref.export.runtime import CPU, CUDA, DecoderSession, available_providers, default_provider, next_outputs
from lmref.spec.errors import InputError
from lmref.spec.vision import check_images

DEVICES = {"cpu": CPU, "cuda": CUDA}


def generate(session: DecoderSession, prompt: list[int], max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             pixel_values: np.ndarray | None = None, stop: int | None = None) -> list[int]:
    """`max_new_tokens` token ids following `prompt`, decoded through the graph's KV cache;
    `pixel_values` [N, C, H, W]: the images of the prompt's placeholders (a MultimodalSession's);
    `stop`: a token after which generation ends early (it is returned)."""
    import torch

    from lmref.train.generate import check_request, next_token, seeded_generator, without_placeholder

    total = check_request(prompt, max_new_tokens, session.config.max_seq_len, temperature, top_k, top_p)
    images = check_images(session.config, np.array([prompt], np.int64), pixel_values)
    generator = seeded_generator(seed)
    mask = np.ones((1, total), np.int64)
    prefill = {} if images is None else {"pixel_values": images}
    logits, past = session.step(np.array([prompt], np.int64), mask[:, : len(prompt)], session.empty_past(1), **prefill)
    out: list[int] = []
    for i in range(max_new_tokens):
        last = without_placeholder(session.config, torch.from_numpy(logits[:, -1]))
        token = int(next_token(last, temperature, top_k, top_p, generator)[0])
        out.append(token)
        if token == stop:
            break
        if i + 1 < max_new_tokens:  # a LongRoPE step past the original context re-runs it all (next_outputs)
            step = next_outputs(session, np.array([prompt + out], np.int64), mask[:, : len(prompt) + i + 1], past, 1)
            logits, past = step["logits"], [step[name] for name in present_names(session.config.n_layers)]
    return out


def load_tokenizer(bundle: Bundle):
    """The tokenizer recorded at export time (a training checkpoint's), or BundleError."""
    from lmref.train.tokenizer import load_tokenizer as load

    info = bundle.manifest.get("tokenizer")
    if not info:
        raise BundleError(f"{bundle.root}: the export records no tokenizer (export a checkpoint written by "
                          "`lmref train`, which names its tokenizer)")
    return load(bundle.root, info, bundle.config.vocab_size, MANIFEST_FILE)


def load_onnx_generator(out: str | Path, device: str = "auto"):
    """(session, tokenizer) of an exported directory on `device` (auto, cpu, cuda): a
    DecoderSession, or with a vision tower the MultimodalSession of its three graphs."""
    if device != "auto" and device not in DEVICES:
        raise InputError(f"--device must be auto, cpu or cuda, got {device!r}")
    provider = default_provider() if device == "auto" else DEVICES[device]
    if provider not in available_providers():  # bad input, said before the export is read
        raise InputError(f"--device {device}: onnxruntime has no {provider} here (available: "
                         f"{', '.join(available_providers())}; install onnxruntime-gpu for cuda)")
    bundle = open_bundle(out)
    return open_chain(bundle, provider), load_tokenizer(bundle)
