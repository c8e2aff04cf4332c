"""The weights an adapter call receives: a copy of the shared ones (store.case_params builds
each case's weights once per (config, seed), and an adapter may write into what it gets).

A copy of llama4-maverick's 167 MB case weights takes 0.07 to 0.3 s (most of it the page
faults of fresh memory), and the suite calls forward, loss, capture and routing on the same
weights in turn.  So the previous call's copies are handed out again while they still equal
their source bit for bit (spec/params.py `same_weights`, one comparison: 0.014 s), and copied
afresh once an adapter has written into them, made them read-only, or the weights change.  Each call gets its own
dict: adding or removing its entries touches nothing else.
"""

from __future__ import annotations

import numpy as np

from lmref.spec.params import same_weights


class WeightCopies:
    """Copies of the last weights handed out, with their source (module docstring)."""

    def __init__(self):
        self._source: dict | None = None
        self._copies: dict[str, np.ndarray] = {}

    def of(self, params: dict) -> dict[str, np.ndarray]:
        """{name: a copy of params[name]}: the last copies while they equal `params` (the same
        dict, its arrays unchanged and unwritten) and are still writeable (an adapter may have
        set an array read-only), else fresh ones."""
        if (params is not self._source or not all(a.flags.writeable for a in self._copies.values())
                or not same_weights(self._copies, params)):
            self._source, self._copies = None, {}  # the old copies freed first: their memory is reused
            self._copies = {k: np.array(v, copy=True) for k, v in params.items()}
            self._source = params
        return dict(self._copies)
