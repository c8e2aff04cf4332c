"""The order the conformance checks run in (conformance/plugin.py's collection hook)."""

from __future__ import annotations

import pytest


def arch_major(items: list[pytest.Item], archs: list[str]) -> list[pytest.Item]:
    """The items with every check of one arch together, in `archs`' order, and within an arch
    every check of one case together (the cases in the order collected, each case's checks
    capability by capability); items without a golden case stay first.  pytest collects
    capability by capability over every arch, so an adapter that keeps its models for a few
    cases (the ONNX adapter's sessions, export/onnx_adapter.py CACHE_SIZE) would build each
    case's model again for each capability once there are many archs; and case by case, the
    calls on one case's weights follow each other, so each finds them by one comparison with
    the last call's (conformance/copies.py, the ONNX adapter's session key)."""
    rank = {arch: i for i, arch in enumerate(archs)}
    case_rank: dict = {}  # each case in the order its first check was collected
    for item in items:
        case_rank.setdefault(_golden_key(item), len(case_rank))

    def order(item: pytest.Item) -> tuple[int, int]:
        key = _golden_key(item)
        return (-1, 0) if key is None else (rank.get(key[0], len(rank)), case_rank[key])

    return sorted(items, key=order)  # stable: a case's checks in the order collected


def _golden_key(item: pytest.Item) -> tuple[str, str] | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("golden_key") if callspec is not None else None
