"""A throwaway copy of the repository where a mutant is applied and the suites run: the user's tree
is never touched.

The copy holds the files git knows (tracked, and untracked ones it does not ignore: the user's
uncommitted work is what gets mutated), conformance/golden included; not .venv, build/ or .git.
It gets its own virtual environment (`python -m venv --without-pip`, milliseconds) whose
site-packages has one .pth file that

  1. adds the real environment's site-packages as a site directory (torch, jax, pytest, the
     `lmref` pytest plugin's entry point; its .pth files run too), and
  2. puts a finder first on sys.meta_path that maps `lmref` and `lmref.<package>` to the copy's
     folders, read from pyproject.toml's [tool.setuptools.package-dir] (the mapping the editable
     install's finder holds for the real tree; being first, ours wins).

So `<copy>/.venv/bin/python -m pytest` imports the copy's lmref, and so does every subprocess
that runs sys.executable (the conformance suite's worker processes).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from pathlib import Path

from tools.mutation.mutants import Mutant

FINDER_MODULE = "_lmref_sandbox_finder"
FINDER_SOURCE = '''"""Maps lmref and lmref.<package> to the mutation sandbox's folders (tools/mutation/sandbox.py)."""
import sys
from importlib.util import spec_from_file_location
from pathlib import Path

MAPPING = {mapping!r}


class SandboxFinder:
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        folder = MAPPING.get(fullname)
        if folder is None:
            return None
        init = Path(folder) / "__init__.py"
        return spec_from_file_location(fullname, init, submodule_search_locations=[folder])


def install():
    if SandboxFinder not in sys.meta_path:
        sys.meta_path.insert(0, SandboxFinder)
'''


def repo_files(repo: Path) -> list[str]:
    """Repo-relative paths of the files git tracks or would track (not ignored), that exist."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            check=True, capture_output=True).stdout.decode().split("\0")
    return sorted({name for name in listed if name and (repo / name).is_file()})


def package_dirs(repo: Path) -> dict[str, str]:
    """{import name: folder relative to the repo} from pyproject.toml (lmref.spec -> spec)."""
    pyproject = tomllib.loads((repo / "pyproject.toml").read_text())
    return dict(pyproject["tool"]["setuptools"]["package-dir"])


def real_site_packages() -> str:
    """The site-packages of the environment running this tool (the one `make install` filled)."""
    return sysconfig.get_paths()["purelib"]


class Sandbox:
    """A copy of `repo` in a new temporary directory, with its own interpreter (`python`)."""

    def __init__(self, repo: Path, parent: Path | None = None):
        self.repo = Path(repo).resolve()
        self.root = Path(tempfile.mkdtemp(prefix="lmref-mutant-", dir=parent))
        try:
            self._copy()
            self._make_venv()
        except BaseException:
            self.remove()
            raise

    @property
    def python(self) -> str:
        return str(self.root / ".venv" / "bin" / "python")

    def _copy(self) -> None:
        for name in repo_files(self.repo):
            target = self.root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.repo / name, target)

    def _make_venv(self) -> None:
        venv = self.root / ".venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
        site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip())
        mapping = {name: str(self.root / folder) for name, folder in package_dirs(self.repo).items()}
        (site / f"{FINDER_MODULE}.py").write_text(FINDER_SOURCE.format(mapping=mapping))
        (site / "000_lmref_sandbox.pth").write_text(
            f"import site; site.addsitedir({real_site_packages()!r})\n"
            f"import {FINDER_MODULE}; {FINDER_MODULE}.install()\n")

    def apply(self, mutant: Mutant) -> None:
        """Replace the mutant's old text by its new text in the copy (the old text must occur once)."""
        path = self.root / mutant.file
        text = path.read_text()
        found = text.count(mutant.old)
        if found != 1:
            raise ValueError(f"mutant {mutant.id}: its old text occurs {found} times in {mutant.file}, expected once")
        path.write_text(text.replace(mutant.old, mutant.new))

    def remove(self) -> None:
        """Delete the copy (only the directory this sandbox created)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
