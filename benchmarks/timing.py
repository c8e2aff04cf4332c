"""The timers every benchmark uses: `timed`, the median of repeated runs of one function, and
`alternating`, contenders run in turn, block by block, so that a change of the shared
machine's load weighs on all of them alike (the way every side-by-side ratio is measured)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median seconds of `fn` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclass(frozen=True)
class Alternated:
    """Seconds of every timed call, by contender, in call order; `per_block` calls make a block."""

    times: dict[str, list[float]]
    per_block: int

    def median(self, name: str) -> float:
        """Median seconds of one call of contender `name`."""
        return statistics.median(self.times[name])

    def medians(self) -> dict[str, float]:
        """{contender: its median}."""
        return {name: self.median(name) for name in self.times}

    def block_ratios(self, numerator: str, denominator: str) -> list[float]:
        """Per round, the median call time of `numerator`'s block over `denominator`'s block of
        the same round: the spread of the ratio of medians."""
        a, b, n = self.times[numerator], self.times[denominator], self.per_block
        return [statistics.median(a[i:i + n]) / statistics.median(b[i:i + n]) for i in range(0, len(a), n)]


def alternating(contenders: dict[str, Callable[..., object]], rounds: int, per_block: int = 1,
                inputs: Sequence | None = None) -> Alternated:
    """Time `rounds` rounds; in each, every contender in turn makes a block of `per_block` calls.
    With `inputs`, call k of a round gets inputs[round * per_block + k] (every contender the same
    ones); without, contenders take no argument.  Each call must return only when its work is done
    (a device synchronized, a loss read).  Warm up before: nothing here is left untimed."""
    if inputs is not None and len(inputs) < rounds * per_block:
        raise ValueError(f"{rounds} rounds of {per_block} calls need {rounds * per_block} inputs, got {len(inputs)}")
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(rounds):
        for name, fn in contenders.items():
            for k in range(per_block):
                args = () if inputs is None else (inputs[r * per_block + k],)
                start = time.perf_counter()
                fn(*args)
                times[name].append(time.perf_counter() - start)
    return Alternated(times, per_block)
