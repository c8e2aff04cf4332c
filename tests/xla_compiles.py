"""Cheap XLA compiles for the tests of the JAX twin, and XLA's defaults where a test asks for them.

Every hypothesis example draws a new config, a static jit argument, so every example
compiles, and compilation is nearly all of a tiny model's time.  XLA's CPU backend spends
most of it optimising (~0.8 s per tiny model on 2 cores, ~0.3 s with
`jax_disable_most_optimizations`); running op by op (`jax.disable_jit()`) is slower still,
as each primitive compiles for each new shape (~4 s per first forward).  So
`fast_xla_compiles` turns off most of XLA's optimisations and has the CPU backend generate
its code the older, cheaper way, on the calling thread:

- `xla_cpu_use_fusion_emitters=False`: the elemental LLVM IR emitters instead of the MLIR
  fusion emitters;
- `xla_cpu_parallel_codegen_split_count=1`: no codegen threads (a test process has one core).

Measured on 2 cores, 2026-12-06: llama3, mixtral-8x7b and gemma3-4b at three lengths each
compile in 3.6 s with XLA's defaults less the optimisations, 1.9 s with the two options
(27 programs); tests/jax/test_moe.py and test_vision.py together take 73 CPU-seconds
instead of 163.  The numbers barely move: on the stored cases of nine archs (llama3,
mixtral-8x7b, gemma3-4b, llava-1.5-7b, llama4-scout, olmo, bloom-560m, gpt2,
phi-3-mini-128k; up to three cases each) the JAX adapter's bfloat16 logits, losses and
decodes are bit for bit those of XLA's default codegen, and so are the float32 losses and
decodes; float32 logits move by at most 1.7e-6, far inside
the float32 row.  Without the optimisations they were within 4e-6 of the optimised ones.

The options go into each compilation's options, through the function that builds them
(`jax._src.compiler.get_compile_options`, private: JAX offers per-compile options only on
`jax.jit(..., compiler_options=)`, which the shipped entry points do not take).  Where this
JAX lacks that function or XLA refuses an option, the tests keep XLA's default codegen and
say so in a warning: slower, never wrong.  Only the tests change: `pytest conformance/
--impl jax` and lmref itself compile with XLA's defaults.
"""

from __future__ import annotations

import contextlib
import warnings

import jax

CHEAP_CPU_CODEGEN = {"xla_cpu_use_fusion_emitters": False, "xla_cpu_parallel_codegen_split_count": 1}
_codegen: dict = {}  # the options every compilation gets now: CHEAP_CPU_CODEGEN or none


def _install() -> bool:
    """Route every compilation's options through `_codegen`; False where this JAX or XLA refuses."""
    from jax._src import compiler

    build = getattr(compiler, "get_compile_options", None)
    if build is None:
        return False
    if getattr(build, "lmref_codegen", False):
        return True

    def with_codegen(*args, env_options_overrides=None, **kwargs):
        if _codegen:  # else the call goes through as it came (conformance/ after the tests, in one process)
            env_options_overrides = {**_codegen, **(env_options_overrides or {})}
        return build(*args, env_options_overrides=env_options_overrides, **kwargs)

    with_codegen.lmref_codegen = True
    compiler.get_compile_options = with_codegen
    _codegen.update(CHEAP_CPU_CODEGEN)
    try:
        jax.block_until_ready(jax.jit(lambda x: x + 1)(1.0))  # a new function: compiled now, with the options
    except Exception as e:  # noqa: BLE001 - whatever the refusal, the default codegen stays
        compiler.get_compile_options = build
        warnings.warn(f"the tests compile with XLA's default CPU codegen ({CHEAP_CPU_CODEGEN} refused: {e})",
                      stacklevel=2)
        return False
    finally:
        _codegen.clear()
    return True


@contextlib.contextmanager
def _xla(disable_most_optimizations: bool, codegen: dict):
    previous = jax.config.values["jax_disable_most_optimizations"], dict(_codegen)
    jax.config.update("jax_disable_most_optimizations", disable_most_optimizations)
    _codegen.clear()
    _codegen.update(codegen)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", previous[0])
        _codegen.clear()
        _codegen.update(previous[1])


def fast_xla_compiles():
    """Most optimisations off and the cheaper CPU codegen (where XLA takes it), until exit."""
    return _xla(True, CHEAP_CPU_CODEGEN if _install() else {})


def default_xla_optimizations():
    """XLA's defaults until exit; a function must be new to the jit cache, whose key ignores both."""
    return _xla(False, {})
