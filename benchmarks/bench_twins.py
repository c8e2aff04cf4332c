"""Speed of the twins, side by side in one run: impl_torch vs Hugging Face transformers, and
impl_jax (jit) vs impl_torch, on the same config, weights, dtype (float32) and thread count.

    python benchmarks/bench_twins.py --threads 1            # small (~10M) and medium (~100M)
    python benchmarks/bench_twins.py --threads 1 --sizes small --repeats 5
    python benchmarks/bench_twins.py --device cuda          # the GPU rows: torch on CUDA, JAX on its GPU backend

For each family (GPT-2, LLaMA) and size it measures (a) a training step: forward, backward
and AdamW, and (b) a forward pass, and prints tokens/s and the ratios ours / peer (> 1: ours
is faster), each with its spread over the rounds.  First it checks that the contenders agree:
the same logits, and the same loss in their first training step.  Then the contenders run in
turn, one call each per round (benchmarks/timing.py `alternating`), so that a change of the
shared machine's load weighs on all of them alike; compare ratios from one run, not absolute
numbers across runs.  Results are recorded in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tempfile
from collections.abc import Callable

import numpy as np
import torch

from timing import Alternated, alternating  # benchmarks/timing.py, beside this script
from lmref.spec.config import ModelConfig
from lmref.spec.params import init_params, param_count
from lmref.spec.presets import get_preset

SIZES = {
    # ~10M parameters: a model that trains in minutes on a laptop.
    "small": dict(d_model=256, n_layers=6, n_heads=8, head_dim=32, vocab_size=8192, batch=8, seq=256),
    # ~100M parameters: GPT-2-small class.
    "medium": dict(d_model=768, n_layers=12, n_heads=12, head_dim=64, vocab_size=16384, batch=4, seq=256),
}


def bench_config(family: str, size: str) -> tuple[ModelConfig, int, int]:
    s = dict(SIZES[size])
    batch, seq = s.pop("batch"), s.pop("seq")
    base = get_preset("gpt2" if family == "gpt2" else "llama3")
    n_kv = s["n_heads"] if family == "gpt2" else s["n_heads"] // 4  # LLaMA 3 keeps its GQA ratio
    d_ff = 4 * s["d_model"] if family == "gpt2" else round(3.5 * s["d_model"] / 64) * 64
    config = dataclasses.replace(base, name=f"{family}-{size}", n_kv_heads=n_kv, d_ff=d_ff,
                                 max_seq_len=max(seq, 1024 if family == "gpt2" else seq), **s)
    return config, batch, seq


# --- the contenders --------------------------------------------------------------------------


def lmref_torch(config: ModelConfig, params: dict, device: str):
    from lmref.impl_torch import Transformer

    return Transformer.from_canonical(config, params, device=device)


def hf_torch(config: ModelConfig, params: dict, device: str):
    from transformers import AutoModelForCausalLM

    from lmref.convert import to_hf

    with tempfile.TemporaryDirectory() as directory:
        to_hf(config, params, directory)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="sdpa")
    return model.to(device)


def torch_steps(model, tokens: torch.Tensor, is_hf: bool) -> tuple[Callable, Callable]:
    """(forward, train_step) closures for a torch model; each waits for its device."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sync = torch.cuda.synchronize if tokens.is_cuda else lambda: None

    def loss_of():
        if is_hf:
            return model(input_ids=tokens, labels=tokens).loss
        return model.loss(tokens)

    def forward():
        with torch.no_grad():
            logits = model(input_ids=tokens).logits if is_hf else model(tokens)
        sync()
        return logits

    def train_step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of()
        loss.backward()
        optimizer.step()
        return loss.item()  # waits for the device

    return forward, train_step


def jax_steps(config: ModelConfig, params: dict, tokens: np.ndarray) -> tuple[Callable, Callable]:
    """(forward, train_step) closures for impl_jax, jitted, with a hand-written AdamW
    (torch.optim.AdamW's defaults: betas 0.9, 0.999, eps 1e-8, weight decay 0.01)."""
    import jax
    import jax.numpy as jnp

    from lmref import impl_jax

    p = impl_jax.from_canonical(params)
    t = jnp.asarray(tokens)
    grad_fn = jax.value_and_grad(lambda q: impl_jax.loss_core(config, q, t))

    @jax.jit
    def update(q, m, v, step):
        loss, g = grad_fn(q)
        b1, b2, lr, eps, wd = 0.9, 0.999, 1e-4, 1e-8, 0.01
        m = jax.tree.map(lambda m_, g_: b1 * m_ + (1 - b1) * g_, m, g)
        v = jax.tree.map(lambda v_, g_: b2 * v_ + (1 - b2) * g_ * g_, v, g)
        c1, c2 = 1 - b1**step, 1 - b2**step
        q = jax.tree.map(lambda q_, m_, v_: q_ * (1 - lr * wd) - lr * (m_ / c1) / (jnp.sqrt(v_ / c2) + eps), q, m, v)
        return q, m, v, loss

    state = {"q": p, "m": jax.tree.map(jnp.zeros_like, p), "v": jax.tree.map(jnp.zeros_like, p), "step": 1}

    def forward():
        logits, _, _ = impl_jax.forward_jit(config, p, t)
        return logits.block_until_ready()

    def train_step() -> float:
        q, m, v, loss = update(state["q"], state["m"], state["v"], state["step"])
        state.update(q=q, m=m, v=v, step=state["step"] + 1)
        return float(loss)  # waits for the device

    return forward, train_step


# --- the run -----------------------------------------------------------------------------------


def as_numpy(logits) -> np.ndarray:
    """A torch tensor (on any device) or a JAX array as a NumPy array."""
    return logits.detach().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)


def check_agreement(config: ModelConfig, forwards: dict[str, Callable], steps: dict[str, Callable]) -> None:
    """AssertionError unless every contender's logits and first training loss are ours (float32:
    logits within 1e-3 of their scale, losses to a relative 1e-4).  The calls warm them up."""
    logits = {name: as_numpy(fn()) for name, fn in forwards.items()}  # [B, S, V] each
    ours = logits["ours"]
    for name, other in logits.items():
        gap = float(np.abs(other - ours).max())
        if not gap <= 1e-3 * max(1.0, float(np.abs(ours).max())):
            raise AssertionError(f"{config.name}: {name}'s logits differ from ours by {gap:.3g}")
    losses = {name: fn() for name, fn in steps.items()}
    if not all(math.isclose(loss, losses["ours"], rel_tol=1e-4) for loss in losses.values()):
        raise AssertionError(f"{config.name}: the first training losses differ: {losses}")


def run(family: str, size: str, repeats: int, with_jax: bool, device: str) -> list[str]:
    config, batch, seq = bench_config(family, size)
    params = {k: v.astype(np.float32) for k, v in init_params(config, 0).items()}
    tokens_np = np.random.default_rng(0).integers(0, config.vocab_size, (batch, seq))
    tokens = torch.from_numpy(tokens_np).to(device)
    forwards, steps = {}, {}
    forwards["ours"], steps["ours"] = torch_steps(lmref_torch(config, params, device), tokens, is_hf=False)
    forwards["peer"], steps["peer"] = torch_steps(hf_torch(config, params, device), tokens, is_hf=True)
    if with_jax:
        forwards["jax"], steps["jax"] = jax_steps(config, params, tokens_np)
    check_agreement(config, forwards, steps)
    lines = []
    for what, contenders in (("forward", forwards), ("train step", steps)):
        times = alternating(contenders, repeats)
        tps = {name: batch * seq / median for name, median in times.medians().items()}
        versus_peer = spread(tps["ours"] / tps["peer"], times, "peer", "ours")
        line = (f"| {config.name} | {param_count(config) / 1e6:.1f}M | {batch}x{seq} | {what} | "
                f"{tps['ours']:,.0f} | {tps['peer']:,.0f} | {versus_peer} |")
        line += (f" {tps['jax']:,.0f} | {spread(tps['jax'] / tps['ours'], times, 'ours', 'jax')} |" if with_jax
                 else " - | - |")
        lines.append(line)
    return lines


def spread(ratio: float, times: Alternated, numerator: str, denominator: str) -> str:
    """"ratio (lowest-highest)": a speed ratio and its range over the rounds, the time of
    `numerator` over that of `denominator` round by round."""
    rounds = times.block_ratios(numerator, denominator)
    return f"{ratio:.2f} ({min(rounds):.2f}-{max(rounds):.2f})"


def pin_threads(n: int) -> None:
    """Run on the first `n` of the cores this process may use, torch with `n` threads (before
    JAX is imported: its CPU thread pool is sized from the cores it may use)."""
    cores = sorted(os.sched_getaffinity(0))
    if not 1 <= n <= len(cores):
        raise SystemExit(f"--threads must be in [1, {len(cores)}] (the cores this process may use), got {n}")
    os.sched_setaffinity(0, cores[:n])
    torch.set_num_threads(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="small,medium")
    parser.add_argument("--families", default="gpt2,llama")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each contender runs once a round (default 3)")
    parser.add_argument("--threads", type=int,
                        help="pin the process to this many cores and torch to as many threads (JAX's CPU backend "
                             "takes no thread count: only the cores it may run on bound it)")
    parser.add_argument("--no-jax", action="store_true")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="torch's device; JAX runs on its default backend, printed (a GPU with jax[cuda])")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this torch has no CUDA device")
    if args.threads:
        pin_threads(args.threads)
    print(f"torch {torch.__version__} on {args.device}, {torch.get_num_threads()} threads; float32; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; cores {sorted(os.sched_getaffinity(0))}")
    if not args.no_jax:
        import jax

        # float32 matmuls in float32 on both sides: JAX's default is TF32 on recent GPUs, torch's
        # CUDA default (torch.backends.cuda.matmul.allow_tf32 False) full float32; the CPU is unchanged.
        jax.config.update("jax_default_matmul_precision", "float32")
        print(f"jax {jax.__version__} on {jax.default_backend()}: {jax.devices()[0]}")
    print("| model | params | batch x seq | what | lmref torch tok/s | HF tok/s | torch / HF | "
          "lmref jax tok/s | jax / torch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        for family in args.families.split(","):
            for line in run(family, size, args.repeats, not args.no_jax, args.device):
                print(line, flush=True)


if __name__ == "__main__":
    main()
