"""Adapters the conformance-plugin tests load with `--impl tests.adapters_for_tests:NAME`.

One correct positive control (the golden in float32), the rest broken on purpose: each must
get the status the suite promises (FAIL, ERROR or NOT SUPPORTED), never PASS.
"""

from __future__ import annotations

import os

import numpy as np

from lmref import impl_numpy


def _float32(params: dict) -> dict:
    return {k: v.astype(np.float32) for k, v in params.items()}


class Float32Numpy:
    """Positive control: impl_numpy computes in the params' dtype, so float32 params give a
    float32 implementation (its RoPE tables may upcast some results: `dtype` says float32)."""

    name = "numpy-float32"
    version = "test"
    dtype = "float32"

    def forward(self, config, params, tokens):
        return impl_numpy.forward(config, _float32(params), tokens).astype(np.float32)

    def decode(self, config, params, tokens, prompt_len):
        return impl_numpy.decode(config, _float32(params), tokens, prompt_len).astype(np.float32)

    def loss(self, config, params, tokens):
        return np.float32(impl_numpy.loss(config, _float32(params), tokens))

    def capture(self, config, params, tokens):
        captured: dict = {}
        impl_numpy.forward(config, _float32(params), tokens, capture=captured)
        return {name: value.astype(np.float32) for name, value in captured.items()}


def forward_only(config, params, tokens):
    """The minimum a third party writes: one function, float64."""
    return impl_numpy.forward(config, params, tokens)


class CrashOnBatch3:
    """forward raises on batch-3 inputs (ERROR for that case only), decode raises
    NotImplementedError (NOT SUPPORTED), loss is correct."""

    name = "crash-on-batch-3"
    dtype = "float64"

    def forward(self, config, params, tokens):
        if tokens.shape[0] == 3:
            raise RuntimeError("simulated crash on batch 3")
        return impl_numpy.forward(config, params, tokens)

    def decode(self, config, params, tokens, prompt_len):
        raise NotImplementedError("no KV cache yet")

    def loss(self, config, params, tokens):
        return impl_numpy.loss(config, params, tokens)


def forward_wrong_shape(config, params, tokens):
    return impl_numpy.forward(config, params, tokens)[..., :-1]  # vocab one short


def forward_nan(config, params, tokens):
    logits = impl_numpy.forward(config, params, tokens)
    logits[0, 2, 5] = np.nan
    return logits


def forward_strings(config, params, tokens):
    return ["not", "logits"]


def forward_none(config, params, tokens):
    return None


def forward_int(config, params, tokens):
    return np.zeros(tokens.shape + (config.vocab_size,), dtype=np.int64)


def forward_exits(config, params, tokens):
    os._exit(0)


def forward_sys_exits(config, params, tokens):
    raise SystemExit(0)


def forward_hangs(config, params, tokens):
    import time

    time.sleep(3600)


class WrongSecondMlp:
    """A subtle bug: layer 1's MLP output is 0.1% too large.  forward and capture both see
    it, so the failure message must name layers.1.mlp as the first diverging component."""

    name = "wrong-second-mlp"
    dtype = "float64"

    @staticmethod
    def _broken(params: dict) -> dict:
        return params | {"layers.1.mlp.w_down": params["layers.1.mlp.w_down"] * 1.001}

    def forward(self, config, params, tokens):
        return impl_numpy.forward(config, self._broken(params), tokens)

    def capture(self, config, params, tokens):
        captured: dict = {}
        impl_numpy.forward(config, self._broken(params), tokens, capture=captured)
        return captured


class MutatesParams:
    """Scales its params in place: the suite hands out copies, so later cases stay correct."""

    dtype = "float64"

    def forward(self, config, params, tokens):
        logits = impl_numpy.forward(config, params, tokens)
        for value in params.values():
            value *= 2.0
        return logits



class ReportsHugePageAdvice:
    """NOT SUPPORTED, naming whether the NumPy of its process advises huge pages and the
    NUMPY_MADVISE_HUGEPAGE it was loaded with (conformance/worker.py sets it in the worker)."""

    def forward(self, config, params, tokens):
        from numpy._core.multiarray import _get_madvise_hugepage

        raise NotImplementedError(f"huge pages advised: {_get_madvise_hugepage()}, "
                                  f"NUMPY_MADVISE_HUGEPAGE={os.environ.get('NUMPY_MADVISE_HUGEPAGE')}")

# --- issue 10: verdict loopholes -------------------------------------------------------------


def _one_percent_off(config, params, tokens):
    """A port with a 1% error in every logit (far outside the float32 row, inside bfloat16's)."""
    return impl_numpy.forward(config, params, tokens) * 1.01


def bf16_one_percent_off(config, params, tokens):
    """Issue 10, item 5: a 1% error returned as bfloat16, no dtype declared.  The row must be
    float32 (the default), not bfloat16 (what it returns)."""
    import ml_dtypes

    return _one_percent_off(config, params, tokens).astype(ml_dtypes.bfloat16)


class DeclaredBf16OnePercentOff:
    """The same 1% error, declared bfloat16: passes the bfloat16 row, and the report must say
    bfloat16 is the tightest row it meets."""

    name = "declared-bf16"
    dtype = "bfloat16"

    def forward(self, config, params, tokens):
        return _one_percent_off(config, params, tokens)


class _MisbehavesOnBatch3:
    """Issue 10, item 7: the golden, except that forward calls `misbehave()` on batch-3 inputs."""

    dtype = "float64"

    def misbehave(self) -> None:
        raise NotImplementedError

    def forward(self, config, params, tokens):
        if tokens.shape[0] == 3:
            self.misbehave()
        return impl_numpy.forward(config, params, tokens)

    def loss(self, config, params, tokens):
        return impl_numpy.loss(config, params, tokens)


class ExitsOnBatch3(_MisbehavesOnBatch3):
    """forward ends its process with os._exit(0) on batch-3 inputs."""

    name = "exits-on-batch-3"

    def misbehave(self) -> None:
        import os

        os._exit(0)


class HangsOnBatch3(_MisbehavesOnBatch3):
    """forward never returns on batch-3 inputs."""

    name = "hangs-on-batch-3"

    def misbehave(self) -> None:
        import time

        time.sleep(3600)


class SpawnsAndHangsOnBatch3(_MisbehavesOnBatch3):
    """forward starts a process of its own on batch-3 inputs (its pid written to the file
    $LMREF_TEST_CHILD_PID), then never returns."""

    name = "spawns-and-hangs-on-batch-3"

    def misbehave(self) -> None:
        import subprocess
        import sys
        import time

        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        with open(os.environ["LMREF_TEST_CHILD_PID"], "w") as f:
            f.write(str(child.pid))
        time.sleep(3600)


class CountsItsLiveCopies:
    """The golden (forward only), which records each process it is loaded in as a file named by
    the pid in $LMREF_TEST_PIDS, and on each forward how many of those processes still run."""

    name = "counts-its-live-copies"
    dtype = "float64"

    def __init__(self):
        self.folder = os.environ["LMREF_TEST_PIDS"]
        open(os.path.join(self.folder, str(os.getpid())), "w").close()

    def forward(self, config, params, tokens):
        live = 0
        for name in os.listdir(self.folder):
            if name.isdigit():
                try:
                    os.kill(int(name), 0)
                    live += 1
                except ProcessLookupError:
                    pass
        with open(os.path.join(self.folder, f"live-{os.getpid()}-{tokens.shape[0]}x{tokens.shape[1]}"), "w") as f:
            f.write(str(live))
        return impl_numpy.forward(config, params, tokens)


class SysExitOnBatch3(_MisbehavesOnBatch3):
    """forward raises SystemExit(0) on batch-3 inputs: an ERROR, not the end of the run."""

    name = "sys-exit-on-batch-3"

    def misbehave(self) -> None:
        raise SystemExit(0)


class DtypeRaises:
    """An adapter whose dtype property raises: a load error, in the worker and in process."""

    @property
    def dtype(self):
        raise RuntimeError("dtype property broke")

    def forward(self, config, params, tokens):
        return impl_numpy.forward(config, params, tokens)


class ExitsOnInit:
    """An adapter class whose constructor calls sys.exit."""

    def __init__(self):
        raise SystemExit(3)

    def forward(self, config, params, tokens):
        return impl_numpy.forward(config, params, tokens)


class CapturesLogitsOnly:
    """Issue 10, item 9: a capture that returns nothing but the logits."""

    name = "captures-logits-only"
    dtype = "float64"

    def forward(self, config, params, tokens):
        return impl_numpy.forward(config, params, tokens)

    def capture(self, config, params, tokens):
        return {"logits": impl_numpy.forward(config, params, tokens)}


class CapturesSome:
    """Issue 10, item 9: a correct capture of five of llama3's nine components."""

    name = "captures-some"
    dtype = "float64"

    def forward(self, config, params, tokens):
        return impl_numpy.forward(config, params, tokens)

    def capture(self, config, params, tokens):
        captured: dict = {}
        impl_numpy.forward(config, params, tokens, capture=captured)
        keep = ("embed", "layers.0.attn", "layers.0.out", "final_norm", "logits")
        return {name: captured[name] for name in keep}


class CapturesANaN(CapturesLogitsOnly):
    """The golden's capture with one NaN in a component after the first one compared."""

    name = "captures-a-nan"

    def capture(self, config, params, tokens):
        captured: dict = {}
        impl_numpy.forward(config, params, tokens, capture=captured)
        captured["layers.0.mlp"][0, 0, 0] = np.nan
        return captured


class CapturesUnknownNames(CapturesLogitsOnly):
    """A capture under names of its own (HF-style), none of them a golden component."""

    name = "captures-unknown-names"

    def capture(self, config, params, tokens):
        return {"model.layers.0.self_attn": impl_numpy.forward(config, params, tokens)}


class CapturesSomeUnderWrongNames(CapturesSome):
    """CapturesSome's five components right, and the other four under HF-style names: a naming
    mistake the capture check must name though what it compared passes."""

    name = "captures-some-under-wrong-names"

    def capture(self, config, params, tokens):
        captured: dict = {}
        impl_numpy.forward(config, params, tokens, capture=captured)
        right = super().capture(config, params, tokens)
        return right | {f"model.{name}": value for name, value in captured.items() if name not in right}


def loss_cross_entropy_only(config, params, tokens):
    """The mean next-token cross-entropy alone: right for a dense model without z-loss, short of
    the golden's loss by the auxiliary terms elsewhere."""
    logits = impl_numpy.forward(config, params, tokens)[:, :-1]  # [B, S-1, V]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(-np.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1).mean())


class CrossEntropyOnly:
    name, dtype = "cross-entropy-only", "float64"

    def forward(self, config, params, tokens):
        return impl_numpy.forward(config, params, tokens)

    def loss(self, config, params, tokens):
        return loss_cross_entropy_only(config, params, tokens)
