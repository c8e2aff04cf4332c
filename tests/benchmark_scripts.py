"""Import a script of benchmarks/ in the tests, as it imports its siblings (`from timing import
...`): benchmarks/ is first on sys.path while it loads, and only then."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")


def import_benchmark(name: str):
    """The module benchmarks/{name}.py."""
    sys.path.insert(0, BENCHMARKS)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(BENCHMARKS)
