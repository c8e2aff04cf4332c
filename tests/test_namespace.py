"""One import namespace: a user's own `train.py`, `export.py`, `conformance.py` or `spec/` in
the working directory shadows nothing of lmref, neither the command line nor the installed
conformance suite (`pytest --pyargs lmref.conformance`, loaded by the pytest11 entry point).

The commands run in child processes started in such a directory, as a user would run them;
each shadowing file leaves a marker when imported, so an import that something swallowed
still fails the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SHADOWS = ("train.py", "export.py", "conformance.py", "spec/__init__.py", "convert.py", "impl_numpy.py")


@pytest.fixture
def crowded(tmp_path: Path) -> Path:
    """A working directory full of modules named like lmref's packages."""
    for name in SHADOWS:
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"open({str(tmp_path / 'IMPORTED')!r}, 'a').write({name!r} + '\\n')\n"
                        f"raise SystemExit('shadowed: {name}')\n")
    return tmp_path


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS", "LMREF_IMPL")}
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def assert_untouched(cwd: Path, proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (cwd / "IMPORTED").exists(), f"imported the user's {(cwd / 'IMPORTED').read_text()}"


def test_the_cli_imported_from_python_ignores_the_users_modules(crowded):
    proc = run(crowded, sys.executable, "-c",
               "from lmref.cli import main; raise SystemExit(main(['presets', '--arch', 'gpt2']))")
    assert_untouched(crowded, proc)
    assert "gpt2" in proc.stdout


def test_python_dash_m_lmref_ignores_the_users_modules(crowded):
    proc = run(crowded, sys.executable, "-m", "lmref", "presets", "--arch", "llama")
    assert_untouched(crowded, proc)
    assert "llama3.1" in proc.stdout


def test_the_installed_suite_runs_from_a_crowded_folder(crowded):
    """`pytest --pyargs lmref.conformance --arch gpt2`, the plugin loaded by its entry point."""
    proc = run(crowded, sys.executable, "-m", "pytest", "--pyargs", "lmref.conformance", "--arch", "gpt2",
               "-p", "no:cacheprovider", "-q")
    assert_untouched(crowded, proc)
    assert "11 checks: 11 PASS" in proc.stdout, proc.stdout


def test_the_entry_point_leaves_other_test_suites_alone(tmp_path):
    """Installed lmref must not add --arch or --impl to a project's own pytest run."""
    (tmp_path / "conftest.py").write_text(
        "def pytest_addoption(parser):\n    parser.addoption('--arch')\n    parser.addoption('--impl')\n")
    (tmp_path / "test_own.py").write_text("def test_own(request):\n    assert request.config.getoption('--arch') == 'x86'\n")
    proc = run(tmp_path, sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--arch", "x86")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


def test_the_distribution_lists_every_package_folder():
    """pyproject.toml names each package (setuptools maps `lmref.X` to the folder X/): a folder
    with an __init__.py that the list misses would be absent from an installed lmref."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {name: Path(path) for name, path in setup["package-dir"].items()}
    on_disk = set()
    for name, folder in folders.items():
        on_disk |= {".".join([name, *init.parent.relative_to(ROOT / folder).parts])
                    for init in (ROOT / folder).rglob("__init__.py")}
    assert on_disk == set(setup["packages"])
