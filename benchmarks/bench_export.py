"""ONNX export time of a preset's conformance case config, side by side in one process:

    python benchmarks/bench_export.py --arch llama4-maverick --rounds 3
    python benchmarks/bench_export.py --arch gemma3-4b --threads 1 --rounds 2

Contenders, alternating round by round after one warm-up call each:
- "stamped": export/exporter.py `export_graph`, unoptimized, as the conformance adapter's first
  case calls it: the layers export/stamping.py `layer_sources` picks traced, the others stamped;
- "every layer": the same decoder traced with all its layers (what `export_graph` falls back to);
- "traced, dynamic" and "traced, static": the stamped route's own trace alone (torch.onnx.export
  of the traced layers, no stamping), with the graph's dynamic dims and with the example's
  static shapes: how much of the exporter's time the symbolic shapes take (the graph needs them).

Prints each contender's median seconds and its ratio to "stamped".  Results: benchmarks/README.md,
"Conformance time per arch".
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from lmref.conformance.cases import case_config
from lmref.conformance.store import case_params
from lmref.export import exporter
from lmref.export.stamping import layer_sources, traced_spec
from lmref.export.vision_graphs import DECODER

from timing import alternating  # benchmarks/timing.py, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="llama4-maverick", help="a preset: its conformance case config is exported")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = case_config(args.arch)
    model, specs = exporter.graph_specs(config, case_params(config, 0))
    spec = specs[DECODER]
    traced = traced_spec(spec)
    sources = layer_sources(model)
    print(f"{args.arch}: {config.n_layers} layers; (attention, feed-forward) source of each: {sources}")
    contenders = {"stamped": lambda: exporter.export_graph(spec, optimize=False),
                  "every layer": lambda: exporter._exported(spec, optimize=False)}
    if traced is not None:
        static = dataclasses.replace(traced, dynamic_shapes=None)
        contenders |= {"traced, dynamic": lambda: exporter._exported(traced, optimize=False),
                       "traced, static": lambda: exporter._exported(static, optimize=False)}
    for fn in contenders.values():
        fn()  # warm-up: the exporter's registry and imports
    result = alternating(contenders, rounds=args.rounds)
    stamped = result.median("stamped")
    for name, seconds in result.medians().items():
        spread = ", ".join(f"{t:.2f}" for t in result.times[name])
        print(f"{name:16s} {seconds:7.2f} s  ({seconds / stamped:.2f} of stamped; runs {spread})")


if __name__ == "__main__":
    main()
