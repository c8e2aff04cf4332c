"""The golden: float64 NumPy, written to be read next to the papers.

`forward(config, params, tokens, *, cache=None, capture=None) -> logits`, `decode`, `loss`.
Params follow the canonical layout of spec/params.py.  Inputs are given in float64; the
functions keep whatever float dtype the params have (the tests use that to build a float32
positive control), but the golden store is always computed in float64.
"""

from lmref.impl_numpy.cache import KVCache
from lmref.impl_numpy.features import FEATURES
from lmref.impl_numpy.model import decode, forward, loss

__all__ = ["FEATURES", "KVCache", "decode", "forward", "loss"]
