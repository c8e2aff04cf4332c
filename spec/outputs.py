"""Where a command may write: a directory that is new, empty, or recognisably its own.

Every lmref command that writes a directory (`lmref train --out`, `lmref golden --out`,
`lmref convert --out`, `lmref export --out`) claims it first:

- a path that does not exist is created;
- an existing directory is taken only when it is empty, or when it holds the marker file
  MARKER that this kind of command wrote there before (so a command can rewrite its own
  output, and never anybody else's);
- an existing file, or a directory holding other things, is refused with OutputError naming
  it and what is in it;
- a command's own inputs are never its output: `inputs` lists the paths it reads, and the
  output may be none of them, lie inside none of them and hold none of them;
- no output lies inside a golden store (LISTING_KINDS): its manifest lists every file it holds,
  and an entry it does not list breaks it.

A report file (`--report-json` of the conformance suite and of `lmref verify`) is checked by
`check_report_file` before the run: not a directory, none of the inputs, writable, and where a
file is there already, an empty one or a report of the same format (the file's own rule for
"new, empty or its own": a name that is a link to a store's manifest, or an adapter's source,
is refused), found without writing anything.  `write_report_file` makes its missing folders and
moves the finished report into place, so a write that fails leaves the old file whole.

The marker is a small JSON file ({"kind": ..., "written_by": "lmref X.Y.Z"}).  What a command
deletes is its own business, but the rule is the same everywhere: only files it wrote (the
ones its manifest or marker lists), never a whole directory it did not create.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from lmref import __version__
from lmref.spec.errors import OutputError

MARKER = ".lmref-output.json"
REPLACING_NAME = re.compile(r"\.(?P<name>.+)\.tmp-\d+")  # replace_files' temporary of the file `name`


def json_object_or_none(path: Path) -> dict | None:
    """The JSON object in the file `path`; None when there is none to read: no such file, one
    that cannot be read, is not UTF-8 JSON, nests past Python's stack, or holds no object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # ValueError: JSONDecodeError, UnicodeDecodeError
        return None
    return data if isinstance(data, dict) else None


def marker_kind(path: Path) -> str | None:
    """The kind recorded by the marker in directory `path`; None without a readable marker."""
    data = json_object_or_none(Path(path) / MARKER)
    return data.get("kind") if data is not None else None


def check_not_an_input(out: Path, inputs: Iterable[str | Path], option: str = "--out") -> None:
    """OutputError when `out` is one of `inputs`, lies inside one, or holds one."""
    target = Path(out).resolve()
    for given in inputs:
        source = Path(given).resolve()
        if target == source:
            raise OutputError(f"{option} {out}: is the command's own input; write somewhere else")
        if source in target.parents:
            raise OutputError(f"{option} {out}: lies inside the input {given}; write somewhere else")
        if target in source.parents:
            raise OutputError(f"{option} {out}: holds the input {given}; write somewhere else")


GOLDEN_STORE_KIND = "golden-store"  # `lmref golden --out` (conformance/store.py)
# Kinds of output whose manifest lists every entry they hold, and which refuse one it does not
# list: another command's output inside one would break it.
LISTING_KINDS = frozenset({GOLDEN_STORE_KIND})


def check_not_in_a_listing_output(out: Path, option: str = "--out") -> None:
    """OutputError when `out` lies inside an output of LISTING_KINDS (a golden store)."""
    for folder in Path(out).resolve().parents:
        kind = marker_kind(folder)
        if kind in LISTING_KINDS:
            raise OutputError(f"{option} {out}: lies inside {folder}, a {kind.replace('-', ' ')} whose manifest "
                              "lists every file it holds (an entry it does not list breaks it); write somewhere else")


def check_not_a_broken_link(out: Path, option: str = "--out") -> None:
    """OutputError when `out` is a symbolic link to nothing (mkdir would fail with "File exists")."""
    if out.is_symlink() and not out.exists():
        raise OutputError(f"{option} {out}: is a link to {os.readlink(out)}, which does not exist")


def describe(entries: list[Path]) -> str:
    """The first few names of a directory's entries, as the refusals list them."""
    names = sorted(e.name + ("/" if e.is_dir() else "") for e in entries)
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check_output(out: str | Path, kind: str, *, inputs: Iterable[str | Path] = (), option: str = "--out") -> Path:
    """OutputError when `claim(out, kind, inputs=inputs)` would refuse `out`; nothing is written
    (a command checks first, does its work, and claims just before its first write)."""
    out = Path(out)
    check_not_an_input(out, [i for i in inputs if i is not None], option)
    check_not_in_a_listing_output(out, option)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{option} {out}: is a file, not a directory")
    check_not_a_broken_link(out, option)
    if out.is_dir():
        entries = list(out.iterdir())
        found = marker_kind(out)
        if entries and found != kind:
            whose = f"marked as another kind of lmref output ({found})" if found else "not written by this command"
            raise OutputError(f"{option} {out}: the directory is not empty and {whose} "
                              f"(it holds {describe(entries)}); give a new or empty directory")
    try:
        _takes_files(out)
    except OSError as e:
        raise OutputError(f"{option} {out}: cannot be written ({e.strerror or e})") from None
    return out


def claim(out: str | Path, kind: str, *, inputs: Iterable[str | Path] = (), option: str = "--out") -> Path:
    """Make `out` the output directory of a command of `kind` (see the module docstring):
    create it or check that it is empty or already this kind's, and mark it.  Returns the path."""
    out = check_output(out, kind, inputs=inputs, option=option)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text(json.dumps({"kind": kind, "written_by": f"lmref {__version__}"}) + "\n")
    except OSError as e:  # the disk filled up, or the folder changed since the check
        raise OutputError(f"{option} {out}: cannot be written ({e.strerror or e})") from None
    return out


def _takes_files(folder: Path) -> None:
    """OSError unless the system says a file can be made in `folder`, or in the nearest folder
    above it that exists (os.access: nothing is written, not even a probe)."""
    existing = folder if folder.exists() else next(p for p in folder.parents if p.exists())
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "Permission denied", str(existing))


def replace_files(out: Path, writers: dict[str, Callable[[Path], None]]) -> None:
    """Write the files of `writers` ({name: write(path)}) into the directory `out`, each under a
    temporary name first, then move them into place in order: a write that fails (a full disk)
    removes what it wrote and leaves the files already there as they were, never a new file
    beside an old one."""
    for name in writers:  # a killed writer's temporaries (the directory is the caller's own)
        for stale in out.glob(f".{glob.escape(name)}.tmp-*"):
            if REPLACING_NAME.fullmatch(stale.name) and stale.is_file():
                stale.unlink()
    temps = {name: out / f".{name}.tmp-{os.getpid()}" for name in writers}  # REPLACING_NAME
    try:
        for name, write in writers.items():
            write(temps[name])
    except BaseException:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
        raise
    for name, temp in temps.items():
        os.replace(temp, out / name)


CONFORMANCE_REPORT_FORMAT = "lmref-conformance-report"  # the `format` of the suite's --report-json
VERIFY_REPORT_FORMAT = "lmref-verify/1"  # and of `lmref verify --report-json`
LARGEST_REPORT_BYTES = 1 << 28  # a larger existing file is not read to see whether it is a report


def report_format(path: Path) -> str | None:
    """The `format` of the JSON report at `path`; None for any other file (or none, or one too
    large to be a report)."""
    try:
        if path.stat().st_size > LARGEST_REPORT_BYTES:
            return None
    except OSError:
        return None
    data = json_object_or_none(path)
    return data.get("format") if data is not None and isinstance(data.get("format"), str) else None


def check_report_file(path: str | Path, inputs: Iterable[str | Path], fmt: str, option: str = "--report-json") -> Path:
    """OutputError unless a report of format `fmt` can be written at `path` (returned resolved):
    it is not a directory, not one of `inputs` nor inside or above one (check_not_an_input), an
    existing file there is empty or a report of `fmt` (nothing else of the user's is replaced),
    and it, or the nearest folder of it that exists, takes a file (os.access: nothing is written
    or created)."""
    given, path = path, Path(path).resolve()
    if path.is_dir() or str(given).endswith(("/", os.sep)):  # "new/": a folder meant, which Path forgets
        raise OutputError(f"{option} {given}: is a directory; give the path of a file to write")
    check_not_an_input(path, inputs, option)
    check_not_in_a_listing_output(path, option)
    if path.is_file() and path.stat().st_size and report_format(path) != fmt:
        raise OutputError(f"{option} {given}: the file exists and is not an earlier {fmt!r} report, so it may be "
                          "yours; give a new path, an empty file or an earlier report of this kind")
    try:
        if not path.exists():
            _takes_files(path.parent)
        elif not os.access(path, os.W_OK):
            raise PermissionError(errno.EACCES, "Permission denied")
    except OSError as e:
        raise OutputError(f"{option} {given}: cannot be written ({e.strerror or e})") from None
    return path


def write_report_file(path: Path, text: str) -> None:
    """Write the report `text` at `path` (checked by check_report_file): its missing folders
    made, the text written under a temporary name beside it, then moved into place."""
    path = path.resolve()  # a link to an earlier report: that report is replaced, not the link
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
