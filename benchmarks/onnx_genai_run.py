"""onnxruntime-genai's own generator over a directory with a genai_config.json (the model
builder's, or `lmref export --ort-contrib --genai-eos`'s), timed as bench_onnx.py
times the plain sessions; run by bench_onnx.py with the interpreter that has onnxruntime_genai
(its --genai-python), since that package cannot share lmref's environment (its model builder
needs a transformers that optimum-onnx does not allow, and lmref pins its own).

    PYTHON benchmarks/onnx_genai_run.py MODEL_DIR PROMPTS.npz --steps 64 --repeats 5 --threads 1 --eos ID

PROMPTS.npz holds `prompt` [1, P] and `batch_prompt` [B, P] (int64).  Prints one JSON line:
the greedy tokens after `prompt`, the per-token decode seconds and the prefill seconds of
`batch_prompt`.  Per-token decode: the time of prefill and `steps` + 1 generate_next_token
calls, less that of prefill and one call, over `steps` (the first call after append_tokens
only picks the token of the prefill's logits; each later one runs the model once,
onnxruntime-genai src/generators.cpp Generator::GenerateNextToken).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from timing import timed  # noqa: E402  (benchmarks/timing.py, beside this script)

def load_model(og, model_dir: Path, threads: int, eos: int):
    """The model of `model_dir`'s genai_config.json with the decoder's intra-op threads pinned and
    `eos` (a token the reference's greedy run never picks) as its end token, so that generation
    stops only at max_length, as the plain loops do: overlaid in memory, the directory untouched."""
    config = og.Config(str(model_dir))
    config.overlay(json.dumps({"model": {"eos_token_id": eos, "pad_token_id": eos, "decoder": {
        "session_options": {"intra_op_num_threads": threads}}}}))
    return og.Model(config)


def generate(og, model, prompt: np.ndarray, calls: int):
    """Greedy generation: append the prompt [B, P] (the prefill), then `calls` tokens."""
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=prompt.shape[1] + max(calls, 1), batch_size=prompt.shape[0], do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    for _ in range(calls):
        generator.generate_next_token()
    return generator


def main() -> None:
    import onnxruntime_genai as og

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("prompts", type=Path)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--eos", type=int, required=True, help="a token id the greedy run never picks")
    args = parser.parse_args()
    data = np.load(args.prompts)
    prompt, batch_prompt = data["prompt"].astype(np.int32), data["batch_prompt"].astype(np.int32)
    model = load_model(og, args.model_dir, args.threads, args.eos)
    tokens = generate(og, model, prompt, args.steps).get_sequence(0)[prompt.shape[1]:]
    full = timed(lambda: generate(og, model, prompt, args.steps + 1), args.repeats)
    prefill = timed(lambda: generate(og, model, prompt, 1), args.repeats)
    batch = timed(lambda: generate(og, model, batch_prompt, 0), args.repeats)
    print(json.dumps({"tokens": [int(t) for t in tokens], "decode_s": max(full - prefill, 0.0) / args.steps,
                      "prefill_s": batch, "version": og.__version__}))


if __name__ == "__main__":
    main()
