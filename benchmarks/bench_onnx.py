"""lmref's ONNX export against its peers and torch eager, side by side in one run: per-token
decode latency (batch 1, greedy, after a 128-token prompt) and prefill throughput (4 x 128).

    python benchmarks/bench_onnx.py --threads 1                      # ours and torch eager only
    python benchmarks/bench_onnx.py --threads 1 --size 125m \
        --genai-python /tmp/peers-genai/bin/python --optimum-python /tmp/peers-optimum/bin/python

Sizes (`--size`): 9m, a 9.3M LLaMA 3-style model (d_model 256, 6 layers, GQA 8 / 2, head_dim
32, d_ff 896, vocab 8192); 125m, 124.7M (d_model 768, 12 layers, GQA 12 / 4, head_dim 64,
d_ff 2048, vocab 32000, untied), GPT-2 small's width and depth.  Weights: init_params seed 0.

CPU contenders, each with `--threads` intra-op threads (onnxruntime 1.32's CPU provider):
- ours: lmref's export (export/exporter.py, opset 18, float32) in a plain InferenceSession;
- ours, contrib ops: `lmref export --ort-contrib`'s graph (export/contrib.py: one packed q, k, v
  MatMul and GroupQueryAttention with its own RoPE, SkipSimplifiedLayerNormalization), in the
  same plain session;
- genai builder graph: onnxruntime-genai's model builder's graph in the same plain session;
- genai generator: that graph through onnxruntime-genai's own generator (its shared KV
  buffer), timed in its interpreter (onnx_genai_run.py);
- optimum: optimum-onnx's export in the same plain session;
- ours, contrib ops, genai generator: our contrib graph through that same generator, from the
  genai_config.json `lmref export --ort-contrib --genai-eos` writes (export/genai.py): the graphs
  compared in one loop.  For every generator row, onnx_genai_run.py sets the end token to one
  the greedy run never picks and pins the threads in the config.
  The two generator rows alternate, one subprocess each, for `--genai-rounds` rounds (medians);
- torch eager: impl_torch.Transformer (SDPA, static KV cache), torch's threads set alike.
The peers are built here from the same weights by their own tools (onnx_peers.py says how,
and how to make their interpreters); a peer whose interpreter is not given is left out.
Every plain session runs the same loop: inputs by name, the presents fed back as the next
past, the next token the argmax of the last logits.  Before timing, every contender's 64
greedy tokens must equal ours.  Ratios are contender / ours: per-token latency below 1 means
the contender is faster.  Where onnxruntime has the CUDA provider, ours also runs on the GPU
with IOBinding against torch on CUDA (without it, host copies make onnxruntime look slow:
huggingface/optimum#1337), both in float32, the same greedy tokens checked first, the two
alternating (`cuda_rows`).  Tests never time; results are in benchmarks/README.md, section ONNX.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import onnx_peers  # benchmarks/onnx_peers.py, beside this script
from onnx_loops import BoundDecoder, PersistentDecoder, PlainDecoder, SharedBufferDecoder  # beside this script
from timing import alternating  # benchmarks/timing.py, beside this script
from lmref.export.exporter import export_onnx
from lmref.export.runtime import CPU, CUDA, available_providers, open_session
from lmref.impl_torch import Transformer
from lmref.spec.config import ModelConfig
from lmref.spec.params import init_params, param_count
from lmref.spec.presets import get_preset

SIZES = {  # --size: the LLaMA 3 preset's architecture at these dimensions
    "9m": dict(vocab_size=8192, d_model=256, n_layers=6, n_heads=8, n_kv_heads=2, head_dim=32, d_ff=896),
    "125m": dict(vocab_size=32000, d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, head_dim=64, d_ff=2048),
}


def bench_config(size: str = "9m") -> ModelConfig:
    """The LLaMA 3-style model of `size` (SIZES; "9m" is bench_twins.py's "small" LLaMA, vocab 8192)."""
    return dataclasses.replace(get_preset("llama3"), name=f"llama-{size}", max_seq_len=1024, **SIZES[size])


# --- torch --------------------------------------------------------------------------------------


def torch_generate(model: Transformer, prompt: torch.Tensor, steps: int) -> list[int]:
    """impl_torch's own greedy decoding: the static KV cache, one prefill, then single-token steps."""
    with torch.no_grad():
        cache = model.new_cache(1, capacity=prompt.shape[1] + steps)
        logits, tokens = model(prompt, cache=cache), []
        for _ in range(steps):
            tokens.append(logits[:, -1:].argmax(-1))  # [1, 1]
            logits = model(tokens[-1], cache=cache)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
    return [int(t) for t in tokens]


def torch_prefill(model: Transformer, prompt: torch.Tensor) -> Callable[[], None]:
    @torch.no_grad()
    def run():
        model(prompt)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
    return run


# --- the run ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Contender:
    """generate(steps) -> greedy tokens after the prompt; prefill() runs the batch prompt."""
    name: str
    generate: Callable[[int], list[int]]
    prefill: Callable[[], object]


def per_token(total: float, prefill: float, steps: int) -> float:
    """Seconds per decode step: (prefill + steps) minus the prefill alone, over steps."""
    return max(total - prefill, 0.0) / steps


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each fn after one warm-up call each, the fns run in turn in every round
    (timing.alternating), so that the machine's load changes weigh on all of them alike."""
    for fn in fns.values():
        fn()
    return alternating(fns, repeats).medians()


def check_tokens(name: str, tokens: list[int], reference: list[int]) -> None:
    """SystemExit unless a contender's greedy tokens are ours."""
    if tokens != reference:
        first = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), min(len(tokens), len(reference)))
        raise SystemExit(f"{name}: greedy tokens differ from ours at step {first}: {tokens[first:first + 4]} "
                         f"against {reference[first:first + 4]}")


def measure(contenders: list[Contender], args, batch_tokens: int) -> dict[str, tuple[float, float]]:
    """{name: (per-token decode seconds, prefill tokens/s)}, the greedy tokens checked first."""
    reference = contenders[0].generate(args.steps)
    for c in contenders[1:]:
        check_tokens(c.name, c.generate(args.steps), reference)
    full = interleaved({c.name: (lambda c=c: c.generate(args.steps)) for c in contenders}, args.repeats)
    pre = interleaved({c.name: (lambda c=c: c.generate(0)) for c in contenders}, args.repeats)
    batch = interleaved({c.name: c.prefill for c in contenders}, args.repeats)
    return {c.name: (per_token(full[c.name], pre[c.name], args.steps), batch_tokens / batch[c.name])
            for c in contenders}


def plain(name: str, path: Path, config: ModelConfig, batch_prompt: np.ndarray, args, *,
          gqa: bool = False) -> Contender:
    """A contender over a plain session of the graph at `path`, in the loop args.loop asks for
    (`shared` only where the graph has GroupQueryAttention, `gqa`; iobinding elsewhere)."""
    loop = {"numpy": PlainDecoder, "iobinding": BoundDecoder, "shared": SharedBufferDecoder if gqa else BoundDecoder,
            "persistent": PersistentDecoder if gqa else BoundDecoder}[args.loop]
    return decoding(name, loop(open_session(path, CPU, threads=args.threads), config), batch_prompt)


def decoding(name: str, decoder: PlainDecoder, batch_prompt: np.ndarray) -> Contender:
    """A contender over one of onnx_loops' decoders: generate decodes batch_prompt's row 0,
    prefill runs the whole batch from an empty past."""
    prompt = batch_prompt[:1]
    return Contender(name, lambda steps: decoder.generate(prompt, steps), lambda: decoder.prefill(batch_prompt))


def eager(model: Transformer, batch_prompt: np.ndarray) -> Contender:
    prompt, batch = (torch.from_numpy(p).to(model.device) for p in (batch_prompt[:1], batch_prompt))
    return Contender("torch eager (impl_torch)", lambda steps: torch_generate(model, prompt, steps),
                     torch_prefill(model, batch))


def table(results: dict[str, tuple[float, float]]) -> list[str]:
    ours_s, ours_tps = results["ours"]
    lines = ["| contender | decode ms/token | / ours | prefill tok/s | / ours |", "|---|---|---|---|---|"]
    for name, (s, tps) in results.items():
        lines.append(f"| {name} | {1e3 * s:.3f} | {s / ours_s:.2f} | {tps:,.0f} | {tps / ours_tps:.2f} |")
    peers = {n: r for n, r in results.items() if not n.startswith(("ours", "torch"))}
    if peers:
        best = min(peers, key=lambda n: peers[n][0])
        for name in (n for n in results if n.startswith("ours")):
            ratio = results[name][0] / peers[best][0]
            lines.append(f"target ({name}): per-token latency / the fastest peer's ({best}) = {ratio:.3f}: "
                         f"{'met' if ratio <= 1.0 else 'not met'} (target <= 1.00)")
    return lines


def node_counts(graphs: dict[str, Path]) -> str:
    """'name N, ...': each graph's nodes as saved (onnxruntime fuses some more at session load)."""
    import onnx

    return ", ".join(f"{name} {len(onnx.load(str(path), load_external_data=False).graph.node)}"
                     for name, path in graphs.items())


def cpu_results(config: ModelConfig, params: dict, work: Path, args) -> dict[str, tuple[float, float]]:
    rng = np.random.default_rng(0)
    batch_prompt = rng.integers(0, config.vocab_size, (args.batch, args.prompt))  # row 0: the decode prompt
    ours = export_onnx(config, params, work / "ours")
    contrib = export_onnx(config, params, work / "ours-contrib", ort_contrib=True, genai_eos=0)  # eos: see below
    contenders = [plain("ours", ours, config, batch_prompt, args),
                  plain("ours, contrib ops", contrib, config, batch_prompt, args, gqa=True)]
    hf = onnx_peers.hf_model(config, params, work / "hf") if args.genai_python or args.optimum_python else None
    if args.genai_python:
        genai_graph = onnx_peers.genai_builder_graph(args.genai_python, hf, work / "genai")
        contenders.append(plain("genai builder graph, plain session", genai_graph, config, batch_prompt, args,
                                gqa=True))
    if args.optimum_python:
        graph = onnx_peers.optimum_graph(args.optimum_python, hf, work / "optimum")
        contenders.append(plain("optimum-onnx export, plain session", graph, config, batch_prompt, args))
    graphs = {"ours": ours, "ours, contrib ops": contrib}
    graphs |= {"genai builder": genai_graph} if args.genai_python else {}
    print(f"graph nodes as saved: {node_counts(graphs)}", flush=True)
    contenders.append(eager(Transformer.from_canonical(config, params).eval(), batch_prompt))
    results = measure(contenders, args, batch_prompt.size)
    if args.genai_python:
        generators = {"genai generator (own loop)": work / "genai",
                      "ours, contrib ops, genai generator": contrib.parent}
        results |= generator_results(generators, contenders[0].generate(args.steps), config, batch_prompt, args)
    return results


def generator_results(model_dirs: dict[str, Path], reference: list[int], config: ModelConfig,
                      batch_prompt: np.ndarray, args) -> dict[str, tuple[float, float]]:
    """{name: (per-token s, prefill tok/s)} of the genai generator over each model directory: one
    subprocess per (round, directory), the directories alternating for `--genai-rounds` rounds so
    that a change of load falls on both, the median over the rounds; every run's greedy tokens
    must equal `reference`."""
    eos = min(set(range(config.vocab_size)) - set(reference))  # a token the greedy run never picks
    runs: dict[str, list[dict]] = {name: [] for name in model_dirs}
    for _ in range(args.genai_rounds):
        for name, model_dir in model_dirs.items():
            run = onnx_peers.genai_generator(args.genai_python, model_dir, batch_prompt[:1], batch_prompt,
                                             steps=args.steps, repeats=args.repeats, threads=args.threads, eos=eos)
            check_tokens(name, run["tokens"], reference)
            runs[name].append(run)
    return {name: (statistics.median(r["decode_s"] for r in rs),
                   batch_prompt.size / statistics.median(r["prefill_s"] for r in rs)) for name, rs in runs.items()}


def cuda_rows(path: Path, config: ModelConfig, params: dict, args) -> list[str]:
    """Ours on CUDA with I/O binding against impl_torch eager on CUDA, both float32 (the session
    without TF32: export/runtime.py): per-token decode and prefill, the greedy tokens checked
    first, the two alternating (`measure`)."""
    batch_prompt = np.random.default_rng(0).integers(0, config.vocab_size, (args.batch, args.prompt))
    model = Transformer.from_canonical(config, params, device="cuda").eval()
    ours = decoding("ours", BoundDecoder(open_session(path, CUDA), config, device="cuda"), batch_prompt)
    contenders = [ours, eager(model, batch_prompt)]
    return ["on CUDA (onnxruntime's CUDA provider; torch CUDA):"] + table(measure(contenders, args, batch_prompt.size))


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="9m", help="the model (default 9m)")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens (default 128)")
    parser.add_argument("--steps", type=int, default=64, help="decode steps (default 64)")
    parser.add_argument("--batch", type=int, default=4, help="prefill batch (default 4)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="CPU threads of every contender (default: torch's); 1 on a machine other jobs "
                             "share, where spinning OpenMP threads stall each other")
    parser.add_argument("--loop", choices=("shared", "persistent", "iobinding", "numpy"), default="shared",
                        help="the plain sessions' loop: `iobinding`, the presents kept as OrtValues and bound "
                             "as the next past; `shared` (default), the same with one KV buffer per layer that "
                             "GroupQueryAttention writes in place, for the graphs that have it; `persistent`, "
                             "`shared` with one binding for the whole generation; `numpy`, session.run with "
                             "NumPy arrays")
    parser.add_argument("--genai-rounds", type=int, default=3,
                        help="alternating rounds of the two genai generator runs (default 3; the median)")
    parser.add_argument("--genai-python", metavar="PYTHON", help="an interpreter with onnxruntime-genai "
                        "(its model builder and generator rows; see onnx_peers.py)")
    parser.add_argument("--optimum-python", metavar="PYTHON", help="an interpreter with optimum-onnx (its row)")
    args = parser.parse_args()
    onnx_peers.check_python(args.genai_python, "onnxruntime_genai", "--genai-python")
    onnx_peers.check_python(args.optimum_python, "optimum.exporters.onnx", "--optimum-python")
    config = bench_config(args.size)
    params = init_params(config, 0)
    torch.set_num_threads(args.threads)
    print(f"{config.name}: {param_count(config) / 1e6:.1f}M params, float32; onnxruntime {ort.__version__} "
          f"({args.threads} intra-op threads), torch {torch.__version__} ({args.threads} threads); "
          f"prompt {args.prompt}, {args.steps} steps, prefill {args.batch}x{args.prompt}, median of {args.repeats}; "
          f"plain-session loop: {args.loop}")
    with tempfile.TemporaryDirectory() as work:
        for line in table(cpu_results(config, params, Path(work), args)):
            print(line, flush=True)
        if CUDA in available_providers() and torch.cuda.is_available():
            for line in cuda_rows(Path(work) / "ours" / "model.onnx", config, params, args):
                print(line, flush=True)
        else:
            print("(no CUDA: onnxruntime-gpu and a CUDA build of torch are needed for the GPU rows)")


if __name__ == "__main__":
    main()
