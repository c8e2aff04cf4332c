"""The PyTorch twin of the golden: a trainable nn.Module, a static KV cache, SDPA and eager
attention kernels, each tested against impl_numpy (tests/torch/).

`Transformer.from_canonical(config, params)` / `.to_canonical()` move the canonical params of
spec/params.py in and out; `forward`, `decode`, `loss` mirror impl_numpy's functions;
`TorchAdapter` (impl_torch.adapter) plugs the twin into the conformance suite.  `FEATURES`
(impl_torch.features) is what it computes; a config needing more is refused by name.
"""

from lmref.impl_torch.cache import KVCache
from lmref.impl_torch.features import FEATURES
from lmref.impl_torch.model import Transformer, decode, forward, loss

__all__ = ["FEATURES", "KVCache", "Transformer", "decode", "forward", "loss"]
