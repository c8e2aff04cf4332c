"""How much work a call does, counted rather than timed (tests never assert on time: the
machines are shared and noisy).

`work(call)` runs `call()` and returns (Python lines executed, peak bytes allocated).  Both are
deterministic: a call that does something per layer of a model executes more lines, or
allocates more, for a deeper stack, whatever the machine's load.  A deep stack (10**5 layers
and more) may run up to SLACK lines more than a shallow one (a branch on the depth, a cache
filled once): per-layer work runs at least one line per layer.
"""

from __future__ import annotations

import sys
import tracemalloc
from collections.abc import Callable

SLACK = 1000


def work(call: Callable[[], object]) -> tuple[int, int]:
    """(lines executed, peak bytes allocated) by `call()`, the lines of every frame it enters."""
    lines = 0

    def tracer(frame, event, arg):
        nonlocal lines
        if event == "line":
            lines += 1
        return tracer

    tracemalloc.start()
    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(previous)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return lines, peak
