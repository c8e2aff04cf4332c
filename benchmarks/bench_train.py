"""Training throughput of `lmref train`'s step against a plain Hugging Face transformers loop,
side by side in one run, on the same config, weights, batches, AdamW settings and threads.

    python benchmarks/bench_train.py --threads 1          # CPU: LLaMA- and GPT-2-style, ~10M and ~100M
    python benchmarks/bench_train.py --threads 1 --sizes llama-10m,gpt2-10m --compile both
    python benchmarks/bench_train.py --gpu --sizes ""     # CUDA: GPT-2 124M and LLaMA-style, bf16, compile, MFU
    python benchmarks/bench_train.py --threads 1 --profile --steps 6   # where each side's CPU time goes

Ours is `train.loop.train_step`, the very function `lmref train` calls (set the learning
rate, forward, cross-entropy, backward, clip, AdamW, zero_grad, read the loss).  The peer is
LlamaForCausalLM / GPT2LMHeadModel loaded with from_pretrained from `convert.to_hf`'s
directory, trained by the same steps written as a user of transformers would
(`model(input_ids=...).logits`, the same cross-entropy over the same targets).  Both use
`train.loop.make_optimizer` (AdamW, decay on matrices only), so the optimizer work is
identical; the first losses are checked to agree, so both compute the same thing.

Timing: after warmup steps, blocks of steps alternate between the two (ours, peer, ours,
...); each reports the median step time.  Shared machines are noisy: compare the ratio from
one run.  MFU (GPU): PaLM's formula (Chowdhery et al. 2022, appendix B), 6 N + 12 L H Q T
FLOPs per token (N: the parameters used in matmuls, i.e. all but the position table; L
layers, H heads, Q head dim, T sequence length) times tokens/s, over the device's dense
bf16 peak.  `--profile` splits each side's steps into matmuls, attention and the rest, and
prints the ceiling of lmref / HF: the peer's total over its matmuls and attention, the ratio
ours would reach if all its other kernels took no time (the matmuls are the same BLAS calls
on both sides).  Results are recorded in benchmarks/README.md ("Training loop").
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

from timing import alternating  # benchmarks/timing.py, beside this script
from lmref.spec.config import ModelConfig
from lmref.spec.params import init_params, param_count, param_shapes
from lmref.spec.presets import get_preset, tiny
from lmref.train.data import BatchStream, Windows, default_corpus
from lmref.train.distributed import Dist
from lmref.train.loop import build_trainer, lr_at, make_optimizer, train_step
from lmref.train.settings import RunSettings
from lmref.train.tokenizer import ByteTokenizer

# Dense bf16 peaks (no sparsity), FLOP/s, from the vendors' data sheets.
PEAK_BF16 = {"H100 SXM": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12,
             "L40S": 362e12, "L4": 121e12, "A10": 125e12}
# name: (preset, sizes, batch, seq).  The 10M cases take about a second a step at one thread, the
# 100M ones a few seconds (a 2-core Xeon VM); the vocabulary is the corpus's 256 bytes.
CPU_SIZES = {
    # `lmref train --arch llama3` as it runs by default: tiny(llama3), bytes, 16 x 128 (0.49M).
    "tiny": ("llama3", dict(), 16, 128),
    # A LLaMA-3-style model of ~3M parameters: 4 layers, d 256, GQA 8 / 2.
    "small": ("llama3", dict(d_model=256, n_layers=4, n_heads=8, n_kv_heads=2, head_dim=32, d_ff=704), 8, 256),
    # LLaMA-style (LlamaForCausalLM peer): RMSNorm, RoPE, GQA, SwiGLU, untied head.
    "llama-10m": ("llama3", dict(d_model=384, n_layers=6, n_heads=6, n_kv_heads=2, head_dim=64, d_ff=1024), 8, 128),
    "llama-100m": ("llama3", dict(d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, head_dim=64, d_ff=2816),
                   4, 128),
    # GPT-2-style (GPT2LMHeadModel peer): learned positions, LayerNorm, biases, GELU-tanh, tied head.
    "gpt2-10m": ("gpt2", dict(d_model=384, n_layers=6, n_heads=6, n_kv_heads=6, head_dim=64, d_ff=1536), 8, 128),
    "gpt2-100m": ("gpt2", dict(d_model=768, n_layers=14, n_heads=12, n_kv_heads=12, head_dim=64, d_ff=3072),
                  4, 128),
}
DEFAULT_SIZES = "llama-10m,gpt2-10m,llama-100m,gpt2-100m"
MATMUL_KERNELS = ("aten::mm", "aten::addmm")  # what a float32 nn.Linear and its backward run on the CPU


@dataclasses.dataclass
class Case:
    config: ModelConfig
    batch: int
    seq: int
    device: torch.device
    bf16: bool
    compile: bool  # torch.compile ours
    compile_peer: bool | None = None  # torch.compile the peer (None: as ours)

    @property
    def peer_compiled(self) -> bool:
        return self.compile if self.compile_peer is None else self.compile_peer


def cpu_case(size: str, compile: str = "none") -> Case:
    """The CPU case `size` (CPU_SIZES) in float32; `compile`: "none", "both", or "ours" (the
    peer eager)."""
    if size not in CPU_SIZES:
        raise SystemExit(f"--sizes: unknown size {size!r}; the sizes are {', '.join(CPU_SIZES)}")
    preset, sizes, batch, seq = CPU_SIZES[size]
    config = tiny(preset, vocab_size=256, **sizes)
    name = size if "-" in size else f"{preset}-{size}"
    return Case(dataclasses.replace(config, name=name), batch, seq, torch.device("cpu"), False,
                compile != "none", compile == "both")


def gpu_cases() -> list[Case]:
    """GPT-2 small (124M, the published config with its 50257-token vocabulary) and a LLaMA-style
    model of its size (d 768, 12 layers, 12 heads, RMSNorm, RoPE, SwiGLU of width 1792, a 32000
    vocabulary, untied: 127M), bf16 autocast, 16 x 1024, both sides compiled."""
    llama = dataclasses.replace(get_preset("llama3"), name="llama-127m", vocab_size=32000, d_model=768,
                                n_layers=12, n_heads=12, n_kv_heads=12, head_dim=64, d_ff=1792, max_seq_len=1024)
    return [Case(config, 16, 1024, torch.device("cuda"), True, True) for config in (get_preset("gpt2"), llama)]


def batches(case: Case, n: int) -> list[np.ndarray]:
    """n global batches [batch, seq + 1] of the embedded corpus (ids folded into the vocab)."""
    tokens = ByteTokenizer().encode(default_corpus()) % case.config.vocab_size
    stream = BatchStream(Windows(tokens, case.seq, "training"), case.batch, seed=0)
    return [stream.next_batch() for _ in range(n)]


def ours(case: Case, params: dict, run: RunSettings):
    trainer = build_trainer(case.config, params, run, Dist(device=case.device), bf16=case.bf16,
                            compile=case.compile)
    return lambda batch: train_step(trainer, [batch])["loss"]


def no_dropout(config) -> list[str]:
    """The dropout rates of a transformers config (GPT2Config's resid_pdrop, embd_pdrop and
    attn_pdrop default to 0.1): zeroed, as lmref has no dropout, so that both steps compute the
    same loss and the peer does no extra work."""
    return [name for name, value in vars(config).items()
            if isinstance(value, float) and (name.endswith("pdrop") or name.endswith("dropout"))]


def peer(case: Case, params: dict, run: RunSettings):
    """A plain transformers training step, the same work as `train_step`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lmref.convert import to_hf

    with tempfile.TemporaryDirectory() as directory:
        to_hf(case.config, params, directory)
        config = AutoConfig.from_pretrained(directory)
        for name in no_dropout(config):
            setattr(config, name, 0.0)
        model = AutoModelForCausalLM.from_pretrained(directory, config=config, dtype=torch.float32,
                                                     attn_implementation="sdpa")
    model = model.to(case.device).train()
    forward = torch.compile(model) if case.peer_compiled else model
    optimizer = make_optimizer(model, run, case.device)
    state = {"step": 0}

    def step(batch: np.ndarray) -> float:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(state["step"], run)
        tokens = torch.from_numpy(batch).to(case.device)
        with torch.autocast(case.device.type, dtype=torch.bfloat16, enabled=case.bf16):
            logits = forward(input_ids=tokens[:, :-1]).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), run.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        return loss.item()

    return step


def flops_per_token(config: ModelConfig, seq: int) -> float:
    """PaLM's 6 N + 12 L H Q T (N: parameters in matmuls: all but the position table)."""
    n = param_count(config) - math.prod(param_shapes(config).get("embed.positions", (0,)))
    return 6 * n + 12 * config.n_layers * config.n_heads * config.head_dim * seq


def peak_flops(override: float | None) -> float | None:
    if override:
        return override
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def contenders(case: Case, warmup: int, n: int) -> tuple[dict, list[np.ndarray]]:
    """{"ours", "peer"}: their steps on the same weights, after checking that both compute the
    same first loss and warming both up; and the n batches to time them on."""
    params = {k: v.astype(np.float32) for k, v in init_params(case.config, 0).items()}
    run = RunSettings(arch="llama3", seq_len=case.seq, batch_size=case.batch, steps=10_000, warmup=10)
    data = batches(case, warmup + n)
    steppers = {"ours": ours(case, params, run), "peer": peer(case, params, run)}
    first = {name: step(data[0]) for name, step in steppers.items()}
    if not math.isclose(first["ours"], first["peer"], rel_tol=1e-2 if case.bf16 else 1e-4):
        raise AssertionError(f"the two loops compute different losses: {first}")
    for step in steppers.values():
        for batch in data[1:warmup]:
            step(batch)
    return steppers, data[warmup:]


def measure(case: Case, steps: int, rounds: int, warmup: int) -> dict:
    """Tokens/s of ours and the peer at their median step time, over alternating blocks of
    `steps`, and "rounds": the ratio ours / peer of each block pair (its spread)."""
    steppers, data = contenders(case, warmup, steps * rounds)
    times = alternating(steppers, rounds, steps, data)  # each step returns loss.item(): it has finished
    tokens = case.batch * case.seq
    return ({name: tokens / median for name, median in times.medians().items()}
            | {"rounds": times.block_ratios("peer", "ours")})


def kernel_seconds(step, data: list[np.ndarray]) -> dict[str, float]:
    """Self CPU seconds of `step` over `data` (torch.profiler), split into the matmuls
    (`aten::mm`, `aten::addmm`: the linear layers and their gradients), attention (the SDPA
    kernels, forward and backward) and the rest (norms, activations, RoPE, the loss, AdamW, and
    the time autograd and the dispatcher spend between kernels)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for batch in data:
            step(batch)
    seconds = dict.fromkeys(("matmuls", "attention", "rest"), 0.0)
    for event in prof.key_averages():
        kind = ("matmuls" if event.key in MATMUL_KERNELS else
                "attention" if "scaled_dot_product" in event.key else "rest")
        seconds[kind] += event.self_cpu_time_total / 1e6
    return seconds


def profile(case: Case, steps: int, warmup: int) -> dict[str, dict[str, float]]:
    """{"ours", "peer"}: kernel_seconds of `steps` steps each, one side after the other."""
    steppers, data = contenders(case, warmup, steps)
    return {name: kernel_seconds(step, data) for name, step in steppers.items()}


def ceiling(peer: dict[str, float]) -> float:
    """The ratio lmref / HF if every kernel of ours but the matmuls and attention took no time:
    the peer's total over its own matmuls and attention (the same kernels on both sides)."""
    return sum(peer.values()) / (peer["matmuls"] + peer["attention"])


def kernel_cell(seconds: dict[str, float]) -> str:
    """'total, matmuls, attention, rest' in seconds."""
    return f"{sum(seconds.values()):.2f}, {seconds['matmuls']:.2f}, {seconds['attention']:.2f}, {seconds['rest']:.2f}"


def profile_row(case: Case, seconds: dict[str, dict[str, float]]) -> str:
    """One row of the --profile table: seconds of ours, of the peer, and the ceiling."""
    return (f"| {case.config.name} | {kernel_cell(seconds['ours'])} | {kernel_cell(seconds['peer'])} | "
            f"{ceiling(seconds['peer']):.2f} |")


def compiled(case: Case) -> str:
    """Which side torch.compile runs: '' (neither), ' compile' (both), ' compile ours'."""
    if not case.compile and not case.peer_compiled:
        return ""
    return " compile" if case.compile == case.peer_compiled else (" compile ours" if case.compile else " compile HF")


def report(case: Case, tps: dict, peak: float | None) -> str:
    line = (f"| {case.config.name} | {param_count(case.config) / 1e6:.2f}M | {case.batch}x{case.seq} | "
            f"{case.device.type} {'bf16' if case.bf16 else 'fp32'}{compiled(case)} | {torch.get_num_threads()} | "
            f"{tps['ours']:,.0f} | {tps['peer']:,.0f} | {tps['ours'] / tps['peer']:.2f} | "
            f"{min(tps['rounds']):.2f}-{max(tps['rounds']):.2f} |")
    if peak:
        fpt = flops_per_token(case.config, case.seq)
        line += f" {tps['ours'] * fpt / peak:.1%} | {tps['peer'] * fpt / peak:.1%} |"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"CPU sizes: {', '.join(CPU_SIZES)}")
    parser.add_argument("--compile", choices=("none", "both", "ours"), default="none",
                        help="CPU: torch.compile both steps, or ours only (the peer eager)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per block")
    parser.add_argument("--rounds", type=int, default=3, help="blocks per contender")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gpu", action="store_true",
                        help="also GPT-2 124M and a LLaMA-style model of its shape on CUDA (bf16, compile), with MFU")
    parser.add_argument("--peak-flops", type=float, help="the device's dense bf16 peak (default: by its name)")
    parser.add_argument("--profile", action="store_true",
                        help="CPU: instead of timing, split each side's --steps steps into matmuls, attention and the "
                             "rest (torch.profiler), with the ceiling of lmref / HF that the matmuls allow")
    args = parser.parse_args()
    if args.profile and args.gpu:
        parser.error("--profile splits the CPU steps only: leave out --gpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}; {torch.get_num_threads()} threads")
    if args.profile:
        print("| model | ours: total, matmuls, attention, rest (s) | HF: total, matmuls, attention, rest (s) | "
              "ceiling of lmref / HF |")
        print("|---|---|---|---|")
        for size in filter(None, args.sizes.split(",")):
            case = cpu_case(size, args.compile)
            print(profile_row(case, profile(case, args.steps, args.warmup)), flush=True)
        return
    print("| model | params | batch x seq | device | threads | lmref train tok/s | HF tok/s | lmref / HF | "
          "per round | MFU lmref | MFU HF |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size in filter(None, args.sizes.split(",")):  # --sizes "": the GPU part alone
        case = cpu_case(size, args.compile)
        print(report(case, measure(case, args.steps, args.rounds, args.warmup), None) + " - | - |", flush=True)
    if args.gpu:
        if not torch.cuda.is_available():
            print("no CUDA device: the GPU part was not run")
            return
        torch.set_float32_matmul_precision("high")
        for case in gpu_cases():
            measured = measure(case, args.steps, args.rounds, max(args.warmup, 5))
            print(report(case, measured, peak_flops(args.peak_flops)), flush=True)


if __name__ == "__main__":
    main()
