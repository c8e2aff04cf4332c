"""The adapter under test as the pytest suite sees it: a stand-in for the adapter that lives in
a worker process (conformance/worker.py), with the same verdict path as an in-process Adapter."""

from __future__ import annotations

import contextlib
import time

from lmref.conformance.adapters import (
    CAPABILITIES, Adapter, AdapterCallError, AdapterLoadError, AdapterNotSupported,
)
from lmref.conformance.results import Output


class WorkerAdapter(Adapter):
    """The adapter named by `spec`, living in a worker process (conformance/worker.py): the
    suite's stand-in for it, with its name, version, dtype and capabilities as the worker
    reported them.  `call_case` runs a capability there; within `check_deadline()` (one check)
    all its calls together get `timeout` seconds.  An adapter that ends its process or runs
    out of time is an AdapterCallError (an ERROR for that check), and the next call starts a
    new worker.  `worker`: one already started (`worker.prestart`), else a new one;
    `timeout_option`: the option that set `timeout`, as its messages name it; `after_loss`: what
    they add on what happens next."""

    def __init__(self, spec: str, timeout: float, worker=None, timeout_option: str = "--timeout",
                 after_loss: str = "; a new worker runs the next check"):
        from lmref.conformance import worker as workers

        self.impl = None
        self.spec, self.timeout, self.timeout_option, self.after_loss = spec, float(timeout), timeout_option, after_loss
        self._deadline: float | None = None
        self.restarts = 0
        self._worker = None
        info = self._start(worker or workers.Worker())
        self.name, self.version, self.dtype = info["name"], info["version"], info["dtype"]
        self._capabilities = tuple(info["capabilities"])

    def _start(self, worker) -> dict:
        try:
            info = worker.load(self.spec, self.timeout)
        except RuntimeError as e:
            raise AdapterLoadError(str(e)) from None
        self._worker = worker
        return info

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    def supports(self, capability: str) -> bool:
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}; capabilities: {', '.join(CAPABILITIES)}")
        return capability in self._capabilities

    @contextlib.contextmanager
    def check_deadline(self):
        """Within this block (one check) all the adapter's calls together get `timeout` seconds."""
        self._deadline = time.monotonic() + self.timeout
        try:
            yield
        finally:
            self._deadline = None

    def call_case(self, capability: str, case) -> Output | dict[str, Output]:
        """`capability` on a golden case, whose weights the worker builds from their seed."""
        return self._request(capability, (capability, case.config, case.meta["weights"]["seed"], case.tokens,
                                          case.prompt_len, case.pixel_values))

    def call_on_directory(self, capability: str, config, directory: str, tokens) -> Output | dict[str, Output]:
        """`capability` on the weights of the Hugging Face model in `directory` (`lmref verify`),
        which the worker reads itself."""
        return self._request(capability, (capability, config, str(directory), tokens, None, None))

    def _request(self, capability: str, request: tuple) -> Output | dict[str, Output]:
        from lmref.conformance import worker as workers

        if not self.supports(capability):
            raise AdapterNotSupported(f"{self.name} has no {capability}")
        what = f"{self.name}.{capability}"
        if self._worker is None:
            try:
                self._start(workers.Worker())
            except AdapterLoadError as e:
                raise AdapterCallError(f"{what}: the adapter's worker process could not be restarted: {e}") from None
            self.restarts += 1
        limit = self.timeout if self._deadline is None else max(0.0, self._deadline - time.monotonic())
        try:
            reply = self._worker.call(request, limit)
        except workers.WorkerGone as e:
            self._worker = None
            raise AdapterCallError(f"{what}: the adapter's worker process {e} before returning (os._exit, a crash "
                                   f"such as a segfault, or the system killing it){self.after_loss}") from None
        except BaseException:
            self._worker = None  # killed by Worker.call
            raise
        if reply is None:
            self._worker = None
            raise AdapterCallError(f"{what} did not return within {self.timeout:g} s ({self.timeout_option}): its "
                                   f"worker process was killed{self.after_loss}")
        kind, payload = reply
        if kind == "raised":
            raise payload
        return payload

    def _call(self, capability, config, params, tokens, *extra):
        raise TypeError("a WorkerAdapter runs golden cases and verify's directories only: use call_case "
                        "(run_check does) or call_on_directory")
