"""How the command line ends when the system refuses a read or a write: one line naming the file
(a full disk), or, when the reader of its output has gone, nothing at all."""

from __future__ import annotations

import os
import subprocess
import sys

from lmref.cli import main


def test_output_to_a_reader_that_has_gone_ends_quietly():
    """`lmref presets | head -1`: the pipe's reader is gone before the output is flushed; no
    message and no traceback on stderr, exit status 1."""
    read, write = os.pipe()
    os.close(read)  # every write to `write` now fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "lmref.cli", "presets"], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr


def test_a_write_the_system_refuses_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    """An OSError past the commands' own checks (a disk that fills up midway) is one line with
    the file and the reason, exit status 1."""
    from lmref.convert import checkpoint

    def disk_full(path, tensors, metadata):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "write_file", disk_full)
    assert main(["convert", "--preset", "gpt2", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lmref convert: error: ") and "No space left on device" in err[0]


def test_a_conversion_that_runs_out_of_memory_is_a_failed_run_not_bad_input(tmp_path, capsys, monkeypatch):
    """Past the estimate (or with --force-memory) an allocation can still fail: one line, exit
    status 1 (the run failed), where a refused input is 2."""
    from lmref.commands import convert

    def no_memory(params, dtype):
        raise MemoryError

    monkeypatch.setattr(convert, "_cast", no_memory)
    assert main(["convert", "--preset", "gpt2", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lmref convert: error: out of memory while converting (more than lmref's estimate, or "
                   "--force-memory was given)"]
