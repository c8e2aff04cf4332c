"""Mixture-of-experts speed: impl_torch's Mixtral against transformers' Mixtral on the same
weights, on the CPU, side by side in one run: the forward pass and the training step.

    python benchmarks/bench_moe.py --threads 1
    python benchmarks/bench_moe.py --threads 1 --dispatch loop      # our plain per-expert loop

Ours: `impl_torch.Transformer` (its default sorted expert dispatch) for the forward, and
`train.loop.train_step` (what `lmref train` runs) for the training step, the load-balancing
loss included.  The peer: `MixtralForCausalLM` loaded with from_pretrained from
`convert.to_hf`'s export of the same config and weights, in float32, with transformers' own
defaults (its grouped expert kernel, sdpa attention), trained by the same steps written as a
user of transformers would: the window's first T tokens in (`output_router_logits=True`), the
cross-entropy against the next tokens plus `router_aux_loss_coef * aux_loss`, the objective
`train_step` minimises.  Both use `train.loop.make_optimizer`.  The first forward logits and
the first objectives are checked to agree before anything is timed.

Blocks of runs alternate between the two (ours, peer, ours, ...); each reports the median.
Shared machines are noisy: compare the ratio from one run.  Results: benchmarks/README.md,
"Mixture of experts".
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
from lmref.impl_torch import Transformer
from lmref.spec.config import MoEConfig
from lmref.spec.params import init_params, param_count
from lmref.spec.presets import tiny
from lmref.train.data import BatchStream, Windows, default_corpus
from lmref.train.distributed import Dist
from lmref.train.loop import build_trainer, lr_at, make_optimizer, train_step
from lmref.train.settings import RunSettings
from lmref.train.tokenizer import ByteTokenizer

# A Mixtral-shaped model of ~10M parameters: 4 layers, d 256, GQA 8 / 2, 8 experts of width
# 512, top-2, the published aux weight 0.02; 8 x 128 tokens per step.
SIZE = dict(vocab_size=256, d_model=256, n_layers=4, n_heads=8, n_kv_heads=2, head_dim=32, d_ff=512,
            moe=MoEConfig(n_experts=8, n_experts_per_token=2, aux_loss_coef=0.02))
BATCH, SEQ = 8, 128


def config():
    return dataclasses.replace(tiny("mixtral-8x7b"), name="mixtral-bench", **SIZE)


def batches(n: int, vocab: int) -> list[np.ndarray]:
    tokens = ByteTokenizer().encode(default_corpus()) % vocab
    stream = BatchStream(Windows(tokens, SEQ, "training"), BATCH, seed=0)
    return [stream.next_batch() for _ in range(n)]


def hf_model(cfg, params: dict):
    from transformers import AutoModelForCausalLM

    from lmref.convert import to_hf

    with tempfile.TemporaryDirectory() as directory:
        to_hf(cfg, params, directory)
        return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)


def forwards(cfg, params: dict, dispatch: str) -> dict:
    ours = Transformer.from_canonical(cfg, params, dtype=torch.float32, moe_dispatch=dispatch).eval()
    peer = hf_model(cfg, params).eval()

    def run_ours(tokens):
        with torch.inference_mode():
            return ours(tokens)

    def run_peer(tokens):
        with torch.inference_mode():
            return peer(input_ids=tokens).logits

    return {"ours": run_ours, "peer": run_peer}


def train_steps(cfg, params: dict) -> dict:
    run = RunSettings(arch="mixtral-8x7b", seq_len=SEQ, batch_size=BATCH, steps=10_000, warmup=10)
    trainer = build_trainer(cfg, params, run, Dist(device=torch.device("cpu")))
    peer = hf_model(cfg, params).train()
    optimizer = make_optimizer(peer, run, torch.device("cpu"))
    state = {"step": 0}

    def peer_step(batch: np.ndarray) -> float:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(state["step"], run)
        tokens = torch.from_numpy(batch)
        out = peer(input_ids=tokens[:, :-1], output_router_logits=True)
        ce = F.cross_entropy(out.logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss = ce + cfg.moe.aux_loss_coef * out.aux_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(peer.parameters(), run.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        return loss.item()

    def our_step(batch: np.ndarray) -> float:
        metrics = train_step(trainer, [batch])  # "loss" is the cross-entropy; the objective adds the aux term
        return metrics["loss"] + cfg.moe.aux_loss_coef * metrics["aux"]

    return {"ours": our_step, "peer": peer_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=3, help="blocks per contender")
    parser.add_argument("--per-block", type=int, default=5, help="timed calls per block")
    parser.add_argument("--dispatch", default="sorted", help="impl_torch expert dispatch: sorted, loop or dense")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config()
    params = {k: v.astype(np.float32) for k, v in init_params(cfg, 0).items()}
    data = batches(2 + args.rounds * args.per_block, cfg.vocab_size)
    print(f"torch {torch.__version__}; {torch.get_num_threads()} threads; {cfg.name}: "
          f"{param_count(cfg) / 1e6:.2f}M parameters, {BATCH} x {SEQ} tokens, dispatch {args.dispatch}")
    print("| what | lmref ms | HF ms | HF / lmref (speed ratio) |")
    print("|---|---|---|---|")
    fwd = forwards(cfg, params, args.dispatch)
    probe = torch.from_numpy(data[0][:, :-1])
    diff = (fwd["ours"](probe) - fwd["peer"](probe)).abs().max().item()
    if not diff < 1e-3:
        raise AssertionError(f"the two forwards disagree by {diff}")
    inputs = [torch.from_numpy(b[:, :-1]) for b in data[2:]]
    fwd["ours"](inputs[0]), fwd["peer"](inputs[0])  # warm-up
    t = alternating(fwd, args.rounds, args.per_block, inputs).medians()
    print(f"| forward | {t['ours'] * 1e3:.1f} | {t['peer'] * 1e3:.1f} | {t['peer'] / t['ours']:.2f} |", flush=True)
    steps = train_steps(cfg, params)
    first = {name: step(data[0]) for name, step in steps.items()}
    if not math.isclose(first["ours"], first["peer"], rel_tol=1e-4):
        raise AssertionError(f"the two training steps compute different losses: {first}")
    for step in steps.values():
        step(data[1])
    t = alternating(steps, args.rounds, args.per_block, data[2:]).medians()
    print(f"| training step | {t['ours'] * 1e3:.1f} | {t['peer'] * 1e3:.1f} | {t['peer'] / t['ours']:.2f} |")


if __name__ == "__main__":
    main()
