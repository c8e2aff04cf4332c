"""The JSON files of a golden store read back: MANIFEST.json and each case's case.json.

A custom store (`--golden-dir`) may hold files made by hand, their digests updated in its
manifest, so a file that passes the manifest's check is still checked for what the suite reads
of it: each a JSON object, and case.json's entries of the types conformance/store.py
`case_meta` writes.  Anything else is a GoldenStoreError naming the file and the entry, never a
KeyError or TypeError later in a check.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path


class GoldenStoreError(RuntimeError):
    """The golden store is missing, corrupted, stale or of a format this lmref cannot read."""


def json_object(path: Path, raw: bytes) -> dict:
    """The JSON object in `raw` (the file `path`), or GoldenStoreError naming the file."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError; nesting past the stack
        raise GoldenStoreError(f"{path}: not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise GoldenStoreError(f"{path}: holds a JSON {type(data).__name__}, not an object")
    return data


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# (entry, what it must be, the test): the entries of case.json the suite reads
_CASE_ENTRIES = (
    ("kind", "a string", lambda m: isinstance(m.get("kind"), str)),
    ("config", "an object", lambda m: isinstance(m.get("config"), dict)),
    ("weights.seed", "an integer", lambda m: isinstance(m.get("weights"), dict) and _integer(m["weights"].get("seed"))),
    ("inputs", "an object", lambda m: isinstance(m.get("inputs"), dict)),
    ("inputs.prompt_len", "an integer or null",
     lambda m: m["inputs"].get("prompt_len") is None or _integer(m["inputs"]["prompt_len"])),
    ("expected", "an object", lambda m: isinstance(m.get("expected"), dict)),
    ("expected.captures", "a list of names", lambda m: _strings(m["expected"].get("captures", []))),
    ("tolerances", "an object", lambda m: isinstance(m.get("tolerances", {}), dict)),
    ("routing", "an object with layers (names), k (an integer) and smallest_gap (a number)",
     lambda m: "routing" not in m or (isinstance(m["routing"], dict) and _strings(m["routing"].get("layers"))
                                      and _integer(m["routing"].get("k"))
                                      and isinstance(m["routing"].get("smallest_gap"), numbers.Real))),
)


def check_case_meta(path: Path, meta: dict) -> None:
    """GoldenStoreError naming the first entry of case.json (at `path`) that is not of its type."""
    for entry, what, holds in _CASE_ENTRIES:
        if not holds(meta):
            raise GoldenStoreError(f"{path}: {entry} must be {what}")
