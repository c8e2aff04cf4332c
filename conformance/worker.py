"""The worker process the pytest suite runs the adapter under test in (worker_adapter.WorkerAdapter).

The suite starts one worker per session with multiprocessing's `spawn` method (a fresh
interpreter: nothing of the suite's process is inherited but the environment, the working
directory and sys.path).  The worker loads the adapter itself, from its --impl spec, and
answers one request at a time: a capability on a golden case's config, weight seed and
tokens.  It builds the weights (`store.case_params`, once per config and seed), calls the
adapter through the same `Adapter` wrapper as an in-process run (copies in, validation out)
and sends back the validated float64 result, or the NOT SUPPORTED / FAIL / ERROR exception.
The verdict is computed in the suite's process.  `lmref verify` runs its implementation in a
worker too: its requests name a Hugging Face model directory instead of a seed, and the worker
reads the weights from it as verify does (`LayeredCheckpoint.read_all`, once per directory).

What a worker guards against (issue 10, item 7), each an ERROR for that check only:
  - an adapter that ends its process (`os._exit`, a segfault, the kernel's OOM killer): the
    suite sees the pipe close, reports the exit status, and starts a new worker for the next
    check;
  - an adapter that hangs: each check has a deadline of --timeout seconds (default 600) for
    all the adapter calls it makes; past it the worker is killed and replaced.
A worker whose suite process is gone (killed with SIGKILL, say) ends itself.

Between the suite and its own worker, requests and results travel pickled through a pipe
(multiprocessing's Connection): configs, token and result arrays, the adapter exceptions.
That is the only pickle in lmref, between two processes of one run; weights never travel
through it, nor are they read from a file with pickle (the worker rebuilds them from the seed,
or reads verify's safetensors itself).

This module imports only the standard library: conformance/conftest.py (and loader.py) start
the session's worker before the suite's own heavy imports, so that both interpreters load
NumPy at the same time (`prestart`); the worker learns its --impl spec once the options are
parsed.  A script that calls `pytest.main()` on the suite needs the usual spawn guard
(`if __name__ == "__main__":`), since a spawned process imports the main module.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback

DEFAULT_TIMEOUT = 600.0  # seconds per check; a tiny case takes milliseconds, a first JAX compile seconds
JOIN_SECONDS = 5.0
STOP = None  # the request that ends the worker


def timeout_seconds(value: object) -> float | None:
    """`value` (a flag's text or number) as a check timeout in seconds; None unless it is a
    finite positive number."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


class WorkerGone(Exception):
    """The worker process ended (its pipe closed); `code` is its exit status when known."""

    def __init__(self, code: int | None):
        super().__init__(exit_phrase(code))
        self.code = code


def exit_phrase(code: int | None) -> str:
    """'exited with status 0', 'was killed by SIGSEGV (exit status -11)'."""
    if code is None:
        return "exited (status unknown)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name} (exit status {code})"
    return f"exited with status {code}"


# --- the worker's side ----------------------------------------------------------------------------


def _watch_parent(parent: int) -> None:
    """End the worker when the suite's process is gone, even while an adapter call hangs."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(3)


def _serve(conn, parent: int) -> None:
    """The worker's main loop: import the suite's modules, wait for the spec, load the adapter,
    then answer requests until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the suite's to handle; it stops the worker
    os.setpgrp()  # a process group of its own: Worker.kill ends it with the processes its adapter started
    # Before NumPy loads, unless the user chose: no madvise(MADV_HUGEPAGE) on large arrays. The worker
    # makes every case's weights afresh (and copies of them), and where the kernel compacts memory to
    # fault in huge pages (transparent_hugepage/defrag "madvise"), each fresh 167 MB of llama4-maverick's
    # weights took 0.3 s against 0.08 s in small pages: its --impl onnx run 11.8 s against 10.3 s.
    os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
    threading.Thread(target=_watch_parent, args=(parent,), name="lmref-parent-watch", daemon=True).start()
    from lmref.conformance.adapters import (
        CAPABILITIES, AdapterCallError, AdapterLoadError, AdapterNotSupported, load_resolved,
    )
    from lmref.conformance.results import AdapterResultError, raised
    from lmref.conformance.store import case_params
    from lmref.convert.errors import ConversionError

    import lmref.impl_numpy  # noqa: F401  (the default adapter, the golden: loaded while the suite loads)

    try:
        spec, path = conn.recv()
    except (EOFError, OSError):
        return
    if spec is STOP:
        return
    sys.path[:] = path  # the suite's, as it is once its options are parsed
    try:
        adapter = load_resolved(spec)
        info = {"name": adapter.name, "version": adapter.version, "dtype": adapter.dtype,
                "capabilities": [c for c in CAPABILITIES if adapter.supports(c)]}
    except AdapterLoadError as e:
        conn.send(("load-error", str(e)))
        return
    except BaseException as e:  # noqa: BLE001  (what load_resolved lets through: a capability query that raises)
        conn.send(("load-error", f"loading it raised {raised(e)}"))
        return
    conn.send(("ready", info))
    read: dict = {}  # verify's weights: {directory: params}, the last directory's only
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is STOP:
            return
        capability, config, weights, tokens, prompt_len, pixel_values = request
        try:
            params = read_weights(weights, read) if isinstance(weights, str) else case_params(config, weights)
        except ConversionError as e:  # verify's directory changed or damaged: bad input, not the adapter's fault
            conn.send(("raised", ConversionError(str(e))))
            continue
        try:
            extra = (prompt_len,) if capability == "decode" else ()
            images = {} if pixel_values is None else {"pixel_values": pixel_values}
            reply = ("ok", getattr(adapter, capability)(config, params, tokens, *extra, **images))
        except (AdapterCallError, AdapterNotSupported, AdapterResultError) as e:
            reply = ("raised", type(e)(str(e)))
        except BaseException as e:  # noqa: BLE001  (anything the wrapper let through)
            frames = "".join(traceback.format_tb(e.__traceback__)[-5:])
            reply = ("raised", AdapterCallError(f"{adapter.name}.{capability} raised {raised(e)}\n"
                                                f"worker traceback (most recent call last):\n{frames.rstrip()}"))
        try:
            conn.send(reply)
        except Exception as e:  # noqa: BLE001  (a result that does not pickle)
            conn.send(("raised", AdapterCallError(f"{adapter.name}.{capability}: its result could not be sent back "
                                                  f"to the suite ({type(e).__name__}: {e})")))


def read_weights(directory: str, read: dict) -> dict:
    """The canonical float64 params of the Hugging Face model in `directory`, as `lmref verify`
    reads them (its forward and its capture ask for the same ones: read once)."""
    from lmref.conformance.verify_weights import LayeredCheckpoint

    if directory not in read:
        read.clear()
        read[directory] = LayeredCheckpoint(directory).read_all()
    return read[directory]


# --- the suite's side -----------------------------------------------------------------------------


class Worker:
    """One worker process and the suite's end of its pipe."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        # Not a daemon: an adapter may start processes of its own.  `stop` runs at exit (atexit
        # handlers run last-registered first, so before multiprocessing's joins its children).
        self.process = context.Process(target=_serve, args=(theirs, os.getpid()), name="lmref-adapter-worker")
        self.process.start()
        theirs.close()
        self.conn = ours
        self.loaded = False
        atexit.register(self.kill)

    def load(self, spec: str, timeout: float) -> dict:
        """Have the worker load the adapter named by `spec`; its info (name, version, dtype,
        capabilities).  RuntimeError with the reason when it cannot."""
        try:
            self.conn.send((spec, list(sys.path)))
            if not self.conn.poll(timeout):
                self.kill()
                raise RuntimeError(f"the adapter did not load within {timeout:g} s (--timeout)")
            kind, payload = self.conn.recv()
        except (EOFError, OSError):
            raise RuntimeError(f"the adapter's worker process {exit_phrase(self.kill())} while loading it") from None
        except BaseException:
            self.kill()
            raise
        if kind != "ready":
            self.kill()
            raise RuntimeError(payload)
        self.loaded = True
        return payload

    def call(self, request: tuple, timeout: float):
        """Send a request and wait up to `timeout` s: the reply, or None when time ran out (the
        worker is then killed).  WorkerGone when the worker ended; any interruption kills it."""
        try:
            self.conn.send(request)
            if not self.conn.poll(timeout):
                self.kill()
                return None
            return self.conn.recv()
        except (EOFError, OSError):
            raise WorkerGone(self.kill()) from None
        except BaseException:  # interrupted (Ctrl-C, another plugin's timeout): the worker may be mid-call
            self.kill()
            raise

    def alive(self) -> bool:
        return self.process.is_alive() and not self.conn.closed

    def kill(self) -> int | None:
        """Kill the worker (if it still runs) with its process group, which holds the processes
        its adapter started (a check past --timeout leaves none running), and return its exit
        status.  The group is signalled only while the worker is alive, so its id is still the
        worker's; before the worker has made its group there is none of that id to signal."""
        if self.process.is_alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.kill()
        self.process.join(JOIN_SECONDS)
        with contextlib.suppress(OSError):
            self.conn.close()
        atexit.unregister(self.kill)
        return self.process.exitcode

    def stop(self) -> None:
        """Ask the worker to finish, then kill it if it does not."""
        if self.process.is_alive() and not self.conn.closed:
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(STOP if self.loaded else (STOP, None))
            self.process.join(JOIN_SECONDS)
        self.kill()


_prestarted: Worker | None = None


def prestart() -> None:
    """Start the session's worker now, before the suite's heavy imports (see the module doc)."""
    global _prestarted
    if _prestarted is None:
        try:
            _prestarted = Worker()
        except Exception:  # noqa: BLE001  (no process to be had now: the suite tries again, and says why)
            _prestarted = None


def take_prestarted() -> Worker | None:
    """The worker `prestart` started, once (None when none was started or it is gone)."""
    global _prestarted
    worker, _prestarted = _prestarted, None
    return worker if worker is not None and worker.alive() else None


def discard_prestarted() -> None:
    """Stop a prestarted worker nobody took (the session ended before the suite was configured)."""
    worker = take_prestarted()
    if worker is not None:
        worker.stop()
