"""The `lmref` command line: the top floor.  It imports the other packages; none imports it.

Each command lives in lmref/commands/ and registers itself with `add_commands`; nothing heavy
(torch, JAX, onnxruntime) is imported until a command runs.
"""

from __future__ import annotations

import argparse
import os
import sys

from lmref.commands import check, convert, export, golden, report, train, verify
from lmref.commands.errors import interrupted


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmref", description="lmref: the reference that decoder-only "
                                     "language models check themselves against.")
    sub = parser.add_subparsers(dest="command", required=True)
    golden.add_commands(sub)  # `lmref golden`, `lmref presets`
    convert.add_commands(sub)  # `lmref convert`
    train.add_commands(sub)  # `lmref train`, `lmref generate`, `lmref shapes`
    export.add_commands(sub)  # `lmref export`, `lmref validate-onnx`
    report.add_commands(sub)  # `lmref report`
    check.add_commands(sub)  # `lmref check`
    verify.add_commands(sub)  # `lmref verify`
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = " ".join(filter(None, (args.command, getattr(args, "action", None))))  # "golden export"
    try:
        return args.run(args)
    except KeyError as e:  # unknown arch: the message lists the known ones
        print(f"lmref {command}: error: {e.args[0]}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader left (`lmref presets | head -1`): nothing to say to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return 1
    except KeyboardInterrupt:  # Ctrl-C, after the command's own cleanup (`interruptible` adds what it leaves)
        return interrupted(command)
    except OSError as e:  # a read or write that failed midway (a full disk): one line, not a traceback
        where = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)
        print(f"lmref {command}: error: {where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
