"""Would faster matmuls lift the training step to 1.2 times transformers'?  The GEMMs of one
training step of bench_train.py's CPU sizes, through each float32 GEMM library torch ships for
x86 CPUs, side by side in one run:

    python benchmarks/bench_gemm.py --threads 1                  # the four sizes of bench_train.py
    python benchmarks/bench_gemm.py --threads 1 --sizes llama-10m --rounds 9

- MKL: `torch.mm`, what nn.Linear and its backward run on the CPU in float32 (both sides of
  bench_train.py: its `--profile` counts their matmul time);
- oneDNN: `torch.ops.mkldnn._linear_pointwise`, a private op of torch's that runs a Linear on
  oneDNN, the other GEMM library built into torch's x86 wheels.

A step's GEMMs are every linear's forward x W [T, in] x [in, out] and its backward's two,
g W^T [T, out] x [out, in] and x^T g [in, T] x [T, out], for T = batch x seq tokens and every
matrix of the model that a matmul reads (the layers' projections and the head; GPT-2's tied
head is its token table), in the layouts torch's autograd hands them over (the transposes are
views, not copies), each result dropped at once.  Biases and attention are left out: they are
the same on both sides.  The two libraries alternate, a step's GEMMs a block, and their results
are checked to agree first.
Results are in benchmarks/README.md ("Training loop").
"""

from __future__ import annotations

import argparse

import torch

from bench_train import CPU_SIZES, DEFAULT_SIZES, cpu_case  # beside this script
from timing import alternating  # beside this script
from lmref.spec.params import param_shapes

onednn_linear = torch.ops.mkldnn._linear_pointwise  # (x, w [out, in], *NO_EPILOGUE): x w^T
NO_EPILOGUE = (None, "none", [], "")  # no bias, no fused activation


def step_gemms(size: str) -> list[tuple[int, int, int]]:
    """[(T tokens, in, out)] for every matrix a training step of `size` multiplies by."""
    case = cpu_case(size)
    tokens, shapes = case.batch * case.seq, param_shapes(case.config)
    matrices = [shape for name, shape in shapes.items()
                if len(shape) == 2 and (name.startswith("layers.") or name == "lm_head.weight")]
    if "lm_head.weight" not in shapes:  # tied: the head multiplies by the token table [V, d]
        matrices.append(shapes["embed.tokens"][::-1])
    return [(tokens, n_in, n_out) for n_in, n_out in matrices]


def contenders(gemms: list[tuple[int, int, int]]) -> dict:
    """The step's GEMMs through MKL and through oneDNN, each a function of no argument."""
    generator = torch.Generator().manual_seed(0)
    operands = [(torch.randn(t, n_in, generator=generator), torch.randn(n_out, n_in, generator=generator),
                 torch.randn(t, n_out, generator=generator)) for t, n_in, n_out in gemms]  # x, w [out, in], g

    def mkl():
        for x, w, g in operands:
            torch.mm(x, w.t())  # forward [T, out]
            torch.mm(g, w)  # dx [T, in]
            torch.mm(g.t(), x)  # dw [out, in]

    def onednn():
        for x, w, g in operands:
            onednn_linear(x, w, *NO_EPILOGUE)
            onednn_linear(g, w.t(), *NO_EPILOGUE)
            onednn_linear(g.t(), x.t(), *NO_EPILOGUE)

    x, w, g = operands[0]
    for mkl_out, onednn_out in ((torch.mm(x, w.t()), onednn_linear(x, w, *NO_EPILOGUE)),
                                (torch.mm(g, w), onednn_linear(g, w.t(), *NO_EPILOGUE)),
                                (torch.mm(g.t(), x), onednn_linear(g.t(), x.t(), *NO_EPILOGUE))):
        torch.testing.assert_close(onednn_out, mkl_out, rtol=1e-4, atol=1e-3)
    return {"mkl": mkl, "onednn": onednn}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"some of {', '.join(CPU_SIZES)}")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds, a step's GEMMs each (default 7)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    print("| model | GEMM GFLOP a step | MKL ms | oneDNN ms | MKL GFLOP/s | oneDNN GFLOP/s "
          "| MKL / oneDNN (time) | per round |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        gemms = step_gemms(size)
        runs = contenders(gemms)
        for run in runs.values():
            run()  # warm-up: each library's first call packs and caches
        timed = alternating(runs, args.rounds)
        mkl, onednn = timed.median("mkl"), timed.median("onednn")
        gflop = sum(6 * t * n_in * n_out for t, n_in, n_out in gemms) / 1e9
        ratios = timed.block_ratios("mkl", "onednn")
        print(f"| {size} | {gflop:.1f} | {mkl * 1e3:.0f} | {onednn * 1e3:.0f} | {gflop / mkl:.0f} "
              f"| {gflop / onednn:.0f} | {mkl / onednn:.3f} | {min(ratios):.3f}-{max(ratios):.3f} |")


if __name__ == "__main__":
    main()
