"""`lmref verify`: an implementation against the float64 golden on a Hugging Face checkpoint.

    lmref verify --hf-dir DIR --impl torch                 logits on the fixed 8-token prompt
    lmref verify --hf-dir DIR --impl hf --captures         ... and each layer: the first diverging one
    lmref verify --hf-dir DIR --impl pkg.mod:Adapter --tokens 1,2,3 --report-json out.json

The golden runs in float64 one layer at a time from the safetensors files (conformance/verify.py);
`--impl` is resolved as the conformance suite resolves it.  Exit 0: PASS; 1: FAIL, NOT SUPPORTED
or ERROR (the implementation diverged, returned an invalid result, refused the config or
crashed); 2: bad input (the directory, --impl, --tokens, --tolerance, --report-json), with one
line naming the problem.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lmref.commands.errors import fail, known_errors
from lmref.conformance.adapters import BUILTINS
from lmref.conformance.worker import DEFAULT_TIMEOUT, timeout_seconds

COMMAND = "verify"


def parse_tokens(text: str) -> np.ndarray:
    """'1,2,3' -> int64 [1, 3]; ValueError naming the bad entry."""
    parts = [p.strip() for p in text.split(",")]
    for part in parts:
        if not part.lstrip("-").isdigit():
            raise ValueError(f"--tokens {text}: {part!r} is not an integer token id (expected e.g. 1,2,3)")
        if not -(2**63) <= int(part) < 2**63:
            raise ValueError(f"--tokens {text}: {part} is past int64, the type of token ids")
    return np.array([[int(p) for p in parts]], dtype=np.int64)


def check_report_path(value: str, hf_dir: str) -> Path:
    """The --report-json file: not empty, and spec/outputs.py check_report_file's (not a
    directory, not inside the checkpoint, writable, not a file of another kind; nothing is
    written yet)."""
    from lmref.spec.outputs import VERIFY_REPORT_FORMAT, check_report_file

    if not value.strip():
        raise ValueError("--report-json is empty: give the path of a file to write")
    return check_report_file(value, [hf_dir], VERIFY_REPORT_FORMAT)


def load_in_worker(impl: str | None, timeout: float):
    """The implementation, loaded in a worker process of its own (conformance/worker.py), so that
    one that ends its process or hangs is an ERROR; AdapterLoadError as `load_adapter` gives it."""
    from lmref.conformance.adapters import load_named, resolve_impl_spec
    from lmref.conformance.worker_adapter import WorkerAdapter

    spec, where = resolve_impl_spec(impl)
    return load_named(spec, where, lambda name: WorkerAdapter(name, timeout, after_loss=""))


def cmd_verify(args: argparse.Namespace) -> int:
    from lmref.conformance.adapters import AdapterLoadError
    from lmref.conformance.tolerances import ToleranceError, build_tolerances
    from lmref.conformance.verify import prepare, verify
    from lmref.conformance.verify_report import report_lines, write_report

    adapter = None
    try:
        tokens = None if args.tokens is None else parse_tokens(args.tokens)
        report = None if args.report_json is None else check_report_path(args.report_json, args.hf_dir)
        tolerances = build_tolerances(assignments=args.tolerance)
        if timeout_seconds(args.timeout) is None:
            raise ValueError(f"--timeout must be a positive number of seconds, got {args.timeout}")
        prepared = prepare(args.hf_dir, tokens)  # bad input is named before the worker starts
        adapter = load_in_worker(args.impl, args.timeout)
        result = verify(prepared, adapter, captures=args.captures, tolerances=tolerances)
    except (AdapterLoadError, ToleranceError, ValueError, *known_errors()) as e:
        return fail(COMMAND, e)
    finally:
        if adapter is not None:
            adapter.close()
    print("\n".join(report_lines(result)))
    if report is not None:
        try:
            write_report(result, report)
        except OSError as e:  # checked writable before the run; it may still vanish or fill up
            return fail(COMMAND, f"--report-json {args.report_json}: could not be written ({e.strerror or e})")
        print(f"JSON report: {report}")
    return 0 if result.verdict == "PASS" else 1


def add_commands(sub) -> None:
    """Register `verify`."""
    p = sub.add_parser(
        "verify", help="check an implementation against the float64 golden on a Hugging Face checkpoint",
        description="Run the float64 golden on a Hugging Face model directory's weights, one layer at a time "
                    "from its safetensors files, and the implementation on the whole weights, on a short fixed "
                    "prompt; compare the logits (and, with --captures, each layer) under the tolerance row of "
                    "the implementation's dtype.  Exit 0 PASS, 1 FAIL, NOT SUPPORTED or ERROR, 2 bad input.")
    p.add_argument("--hf-dir", required=True, metavar="DIR", help="a Hugging Face model directory: config.json "
                   "and model.safetensors, or shards with model.safetensors.index.json")
    p.add_argument("--impl", metavar="NAME", help=f"the implementation: a built-in ({', '.join(BUILTINS)}) or "
                   "package.module:attr (default: $LMREF_IMPL, else numpy)")
    p.add_argument("--captures", action="store_true", help="also compare the implementation's captured "
                   "intermediates, layer by layer, and name the first layer that diverges")
    p.add_argument("--tokens", metavar="IDS", help="the prompt as comma-separated token ids (default: 8 fixed "
                   "tokens, t_i = (17 + 7919 i) mod vocab)")
    p.add_argument("--tolerance", action="append", default=[], metavar="D.M=V", help="override one threshold "
                   "(e.g. float32.nmse=1e-8); repeatable")
    p.add_argument("--report-json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="the time each call of the implementation may take; past it, its worker process is killed "
                   f"and the verdict is ERROR (default {DEFAULT_TIMEOUT:g})")
    p.set_defaults(run=cmd_verify)
