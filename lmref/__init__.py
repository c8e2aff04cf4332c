"""lmref: reference implementations and a conformance suite for decoder-only LMs.

The packages of the distribution: `spec` (what a model is), `impl_numpy` (the float64
golden), `conformance` (the pytest suite and golden store) and `lmref` (this command line).
"""

__version__ = "0.1.0"
