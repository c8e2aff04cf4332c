"""Paths named inside a file stay inside their directory.

A Hugging Face shard index (`model.safetensors.index.json`), a training checkpoint's
`trainer_state.json` (its tokenizer file, its list of files) and a run's `latest` name files by
a path relative to their directory.  A path that is absolute or climbs out with `..` would make
lmref read (or check) a file that is not part of the model: it is refused, naming the path.

The rule is lexical: a relative path without a `..` component, so it names something inside the
directory whatever the directory's own path.  Symbolic links inside the directory are followed:
the Hugging Face cache keeps a model's files as links into its blob store.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath


def inside(directory: Path, name: object, what: str, where: str, error: type[Exception],
           kind: str = "directory") -> Path:
    """`directory / name` when `name` is a relative path that stays inside `directory`; else
    `error` ("{where}: names the {what} {name!r}, which is not inside the {kind} {directory}")."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise error(f"{where}: names the {what} {name!r}, which is not a file name")
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts or ".." in windows.parts:
        raise error(f"{where}: names the {what} {name!r}, which is not inside the {kind} {directory}; "
                    f"a path named here must be relative and stay inside it (no absolute path, no '..')")
    return Path(directory) / name
