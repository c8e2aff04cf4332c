"""lmref: reference implementations and a conformance suite for decoder-only language models.

One import namespace over the folders of the repository: `lmref.spec` (what a model is),
`lmref.impl_numpy` (the float64 golden), `lmref.impl_torch` and `lmref.impl_jax` (the twins),
`lmref.conformance` (the pytest suite and golden store), `lmref.convert` (Hugging Face and
checkpoints), `lmref.train`, `lmref.export` (ONNX), and `lmref.cli` (the command line on top).

`__version__` is the one place the version is written (pyproject.toml reads it).
"""

__version__ = "0.1.0"
