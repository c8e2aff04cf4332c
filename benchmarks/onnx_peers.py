"""The peers bench_onnx.py measures lmref's export against, built by their own tools from the
same weights, converted with `lmref convert --to-hf`'s code path (convert.hf.to_hf, float32).

The peers run in interpreters of their own: lmref's environment keeps its pins, and the two
peers need different transformers (onnxruntime-genai 0.18's model builder imports classes of
transformers 5, Qwen3_5ForConditionalGeneration among them; optimum-onnx 0.1.0 requires
transformers < 4.58).  bench_onnx.py runs their tools as subprocesses and times their graphs
with lmref's onnxruntime.  One way to make them (torch: the CPU wheel suffices):

    python3.11 -m venv /tmp/peers-genai
    /tmp/peers-genai/bin/pip install torch==2.13.0 onnxruntime-genai onnx-ir "transformers>=5"
    python3.11 -m venv /tmp/peers-optimum
    /tmp/peers-optimum/bin/pip install torch==2.13.0 optimum-onnx onnxruntime==1.32.0

- onnxruntime-genai's model builder: `python -m onnxruntime_genai.models.builder -i HF -o OUT
  -p fp32 -e cpu` (a fused QKV MatMul, GroupQueryAttention with its RoPE inside, do_rotary,
  SkipSimplifiedLayerNormalization).  It reads the tokenizer and the end token from HF, which a converted
  lmref model has none of: `add_tokenizer` writes a word-level tokenizer of the vocabulary
  (token i is "t{i}") with one extra end token past it; the generator run then sets the end
  token to one the greedy run never picks (onnx_genai_run.py).
- optimum-onnx: `optimum-cli export onnx --task text-generation-with-past` (the TorchScript
  exporter over transformers' LlamaForCausalLM, with its SDPA attention).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from lmref.convert.hf import to_hf
from lmref.spec.config import ModelConfig

HERE = Path(__file__).parent
EOS_TOKEN = "<eos>"


def add_tokenizer(hf_dir: Path, vocab_size: int) -> None:
    """A word-level tokenizer.json of `vocab_size` tokens plus EOS_TOKEN (id vocab_size), and a
    tokenizer_config.json naming it the end token: what the genai builder needs to read."""
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(vocab_size)} | {EOS_TOKEN: vocab_size}
    Tokenizer(models.WordLevel(vocab, unk_token="t0")).save(str(hf_dir / "tokenizer.json"))
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS_TOKEN}))


def hf_model(config: ModelConfig, params: dict[str, np.ndarray], out: Path) -> Path:
    """The weights as a Hugging Face model directory (float32), with add_tokenizer's files."""
    to_hf(config, params, out, dtype="float32")
    add_tokenizer(out, config.vocab_size)
    return out


def run_tool(command: list[str], what: str) -> str:
    """Run a peer's tool; its standard output, or RuntimeError with the tail of its output."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{what} failed ({' '.join(command)}):\n{tail}")
    return done.stdout


def genai_builder_graph(python: str, hf_dir: Path, out: Path) -> Path:
    """onnxruntime-genai's model builder over `hf_dir`, fp32 for the CPU; its model.onnx."""
    run_tool([python, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
              "-p", "fp32", "-e", "cpu"], "onnxruntime-genai's model builder")
    return out / "model.onnx"


def optimum_graph(python: str, hf_dir: Path, out: Path) -> Path:
    """optimum-onnx's export of `hf_dir` for text generation with a KV cache; its model.onnx."""
    run_tool([python, "-m", "optimum.commands.optimum_cli", "export", "onnx", "--model", str(hf_dir),
              "--task", "text-generation-with-past", str(out)], "optimum-cli export onnx")
    return out / "model.onnx"


def genai_generator(python: str, model_dir: Path, prompt: np.ndarray, batch_prompt: np.ndarray, *, steps: int,
                    repeats: int, threads: int, eos: int) -> dict:
    """onnx_genai_run.py's JSON (tokens, decode_s, prefill_s, version) in the genai interpreter."""
    prompts = model_dir / "bench_prompts.npz"
    np.savez(prompts, prompt=prompt, batch_prompt=batch_prompt)
    command = [python, str(HERE / "onnx_genai_run.py"), str(model_dir), str(prompts), "--steps", str(steps),
               "--repeats", str(repeats), "--threads", str(threads), "--eos", str(eos)]
    return json.loads(run_tool(command, "the genai generator run").strip().splitlines()[-1])


def check_python(python: str | None, module: str, option: str) -> None:
    """SystemExit naming `option` unless `python` imports `module`."""
    if python is None:
        return
    done = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{option} {python}: cannot import {module}: {done.stderr.strip().splitlines()[-1:]}")
