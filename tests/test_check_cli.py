"""`lmref check`: logits files judged with the suite's verdicts and messages.  The golden's own
logits pass; the logits of a broken model (computed with the golden, one knob off) fail with the
message `run_check` gives the same logits through an adapter; a missing file is NOT SUPPORTED; a
file of the wrong shape is an error naming it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from safetensors.numpy import save_file

from lmref import impl_numpy
from lmref.cli import main
from lmref.conformance.logits_files import check_directory
from lmref.conformance.runner import FAIL, run_check
from lmref.conformance.store import GoldenStore

ARCH = "llama3"


@pytest.fixture(scope="module")
def cases():
    store = GoldenStore()
    return [store.load(ARCH, name) for name in store.case_names(ARCH)]


def broken_logits(case) -> np.ndarray:
    """What a port with rope_theta 1% off computes on the case (the decode for a decode case)."""
    config = dataclasses.replace(case.config, rope_theta=case.config.rope_theta * 1.01)
    params = case.params()
    if case.kind == "decode":
        return impl_numpy.decode(config, params, case.tokens, case.prompt_len)
    return impl_numpy.forward(config, params, case.tokens)


def write(directory, cases, logits_of, dtype=np.float32, suffix=".npy"):
    directory.mkdir(exist_ok=True)
    for case in cases:
        value = np.ascontiguousarray(logits_of(case), dtype=dtype)
        if suffix == ".npy":
            np.save(directory / f"{case.name}.npy", value)
        else:
            save_file({"logits": value}, str(directory / f"{case.name}.safetensors"))
    return directory


def check(capsys, directory, *extra) -> tuple[int, str, str]:
    status = main(["check", "--arch", ARCH, "--logits", str(directory), *extra])
    out = capsys.readouterr()
    return status, out.out, out.err


def golden(case) -> np.ndarray:
    return case.expected["logits"]


def test_the_goldens_own_logits_pass(cases, tmp_path, capsys):
    directory = write(tmp_path / "logits", cases[:2], golden)
    write(directory, cases[2:], golden, suffix=".safetensors")
    status, out, _ = check(capsys, directory)
    assert status == 0
    lines = [line for line in out.splitlines() if line.startswith("PASS")]
    assert len(lines) == len(cases) == 4
    assert "decode-b2-p5-n6 decode  (row float32, tightest row met: float32)" in out
    assert out.splitlines()[-1] == "4 cases: PASS 4"


def test_a_broken_models_logits_fail_with_the_suites_message(cases, tmp_path, capsys):
    directory = write(tmp_path / "logits", cases, broken_logits, dtype=np.float64)
    status, out, _ = check(capsys, directory)
    assert status == 1
    assert out.splitlines()[-1] == "4 cases: FAIL 4"
    verdicts = check_directory(ARCH, directory)
    for case, verdict in zip(cases, verdicts):
        capability = "decode" if case.kind == "decode" else "forward"
        wrong = broken_logits(case)
        through_adapter = run_check(case, _FixedAdapter(wrong), capability)
        assert verdict.result.status == through_adapter.status == FAIL
        ours, theirs = verdict.result.message.splitlines(), through_adapter.message.splitlines()
        if case.kind == "decode":  # a file holds the decode's logits only: no forward to tell a cache bug apart
            forward_line = "forward on the same tokens could not be compared: decode-b2-p5-n6's file holds decode"
            assert ours.pop(-2).startswith(forward_line) and theirs.pop(-2).startswith("forward (no cache)")
        # the same message, but for how the row was chosen: by --dtype, not by an adapter
        assert ours[0].endswith("(tolerance row float32, the default: no --dtype given)")
        ours[0] = ours[0].replace("no --dtype given", "the adapter declares no dtype")
        assert ours == theirs
        assert verdict.result.message.splitlines()[0] in out
    assert f"repro: lmref check --arch {ARCH} --logits {directory}" in out


class _FixedAdapter:
    """An in-process adapter returning the same logits for forward and decode."""

    def __init__(self, logits):
        self.logits = logits

    def forward(self, config, params, tokens):
        return self.logits

    def decode(self, config, params, tokens, prompt_len):
        return self.logits


def test_missing_files_are_not_supported_never_pass(cases, tmp_path, capsys):
    directory = write(tmp_path / "logits", cases[:1], golden)
    status, out, _ = check(capsys, directory)
    assert status == 0
    assert out.splitlines()[-1] == "4 cases: PASS 1 · NOT SUPPORTED 3"
    assert f"NOT SUPPORTED: no logits file for {ARCH}/{cases[1].name}" in out


def test_no_file_at_all_is_an_error(tmp_path, capsys):
    (tmp_path / "logits").mkdir()
    status, _, err = check(capsys, tmp_path / "logits")
    assert status == 2 and "no file for any case" in err


def test_a_file_of_the_wrong_shape_is_an_error_naming_it_and_the_shape(cases, tmp_path, capsys):
    directory = write(tmp_path / "logits", cases[:1], lambda case: golden(case)[:, :-1])
    status, _, err = check(capsys, directory)
    batch, seq, vocab = cases[0].expected["logits"].shape
    assert status == 2
    assert f"{cases[0].name}.npy: shape ({batch}, {seq - 1}, {vocab}), expected ({batch}, {seq}, {vocab})" in err


def test_the_declared_row_is_the_one_judged(cases, tmp_path, capsys):
    """float32 logits pass the float32 row but not a declared float64 one; a declared float16 row is
    judged as float16 and says so."""
    directory = write(tmp_path / "logits", cases[:1], golden)
    status, out, _ = check(capsys, directory, "--dtype", "float64")
    assert status == 1 and "FAIL" in out and "tolerance row float64, declared with --dtype" in out
    status, out, _ = check(capsys, directory, "--dtype", "float16")
    assert status == 0 and "(row float16, tightest row met: float32)" in out


def test_the_header_names_the_runs_overrides(cases, tmp_path, capsys):
    """Rows loosened with --tolerance are said before any PASS, as the suite's header says them."""
    directory = write(tmp_path / "logits", cases[:1], broken_logits, dtype=np.float64)
    status, out, _ = check(capsys, directory, "--tolerance", "float32.nmse=inf", "--tolerance", "float32.kl=inf",
                           "--tolerance", "float32.atol=inf", "--tolerance", "float32.top1=0")
    assert status == 0 and out.splitlines()[0].endswith(
        'tolerance row float32 (the default; --dtype declares the row); run overrides: '
        '{"float32": {"nmse": Infinity, "kl": Infinity, "atol": Infinity, "top1": 0.0}}'), out


def test_a_npy_that_is_not_one_and_a_folder_named_like_a_file_are_errors_naming_them(cases, tmp_path, capsys):
    """Not NumPy's "pickled (object) data" for a text file, nor a silent NOT SUPPORTED for a folder."""
    directory = write(tmp_path / "logits", cases[1:], golden)
    (directory / f"{cases[0].name}.npy").write_text("1 2 3\n")
    status, _, err = check(capsys, directory)
    assert status == 2 and f"{cases[0].name}.npy: not a .npy file (it does not begin with NumPy's magic" in err
    (directory / f"{cases[0].name}.npy").unlink()
    (directory / f"{cases[0].name}.npy").mkdir()
    status, _, err = check(capsys, directory)
    assert status == 2 and f"{cases[0].name}.npy: not a file; a case's logits are one .npy or .safetensors" in err


def test_a_safetensors_file_needs_one_tensor_named_logits(cases, tmp_path, capsys):
    directory = tmp_path / "logits"
    directory.mkdir()
    save_file({"out": golden(cases[0]).astype(np.float32)}, str(directory / f"{cases[0].name}.safetensors"))
    status, _, err = check(capsys, directory)
    assert status == 2 and "expected one tensor named 'logits', found ['out']" in err


@pytest.mark.parametrize("option", ["--golden-dir", "--tolerances"])
def test_an_empty_store_or_tolerances_file_is_refused(cases, tmp_path, capsys, option):
    """An unset shell variable (`--golden-dir "$STORE"`) must not fall back to the package's store
    or read the working directory as a file."""
    directory = write(tmp_path / "logits", cases[:1], golden)
    status, out, err = check(capsys, directory, option, "")
    assert status == 2 and f"{option} is empty" in err and "PASS" not in out


def test_the_packages_store_must_be_the_release_set(cases, tmp_path, capsys, monkeypatch):
    """As in the suite: a package store whose manifest differs from the pin (a case loosened
    or replaced in place) is refused; named with --golden-dir it is a custom store."""
    import json
    import shutil

    from lmref.conformance import store
    from lmref.conformance.store import DEFAULT_GOLDEN_DIR, MANIFEST

    root = tmp_path / "golden"
    root.mkdir()
    manifest = json.loads((DEFAULT_GOLDEN_DIR / MANIFEST).read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if k.startswith(f"{ARCH}/")}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.copytree(DEFAULT_GOLDEN_DIR / ARCH, root / ARCH)
    directory = write(tmp_path / "logits", cases, golden)
    monkeypatch.setattr(store, "DEFAULT_GOLDEN_DIR", root)
    status, out, err = check(capsys, directory)
    assert status == 2 and "differs from the release golden set" in err and "PASS" not in out
    monkeypatch.undo()  # the package's store is the real one again: `root` is a store of the user's
    status, out, err = check(capsys, directory, "--golden-dir", str(root))
    assert status == 0 and out.splitlines()[-1] == "4 cases: PASS 4", err
    assert f"custom golden store {root} (manifest " in out.splitlines()[0] and "note:" not in out


def test_a_custom_store_that_loosens_a_case_says_so_before_any_verdict(cases, tmp_path, capsys):
    """A case.json of a custom store may loosen its rows (the suite shows it in its header); so
    does lmref check, before the verdicts it judged with them."""
    import json
    import shutil

    from lmref.conformance.store import DEFAULT_GOLDEN_DIR, MANIFEST, sha256_of

    root = tmp_path / "golden"
    root.mkdir()
    shutil.copytree(DEFAULT_GOLDEN_DIR / ARCH, root / ARCH)
    rel = f"{ARCH}/{cases[0].name}/case.json"
    meta = json.loads((root / rel).read_text())
    meta["tolerances"] = {"float32": {"nmse": 1.0}}
    (root / rel).write_text(json.dumps(meta))
    manifest = json.loads((DEFAULT_GOLDEN_DIR / MANIFEST).read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if k.startswith(f"{ARCH}/")}
    manifest["files"][rel] = sha256_of(root / rel)
    (root / MANIFEST).write_text(json.dumps(manifest))
    status, out, err = check(capsys, write(tmp_path / "logits", cases, golden), "--golden-dir", str(root))
    assert status == 0, err
    note = f'note: {ARCH}/{cases[0].name}\'s case.json overrides tolerances: {{"float32": {{"nmse": 1.0}}}}'
    lines = out.splitlines()
    assert lines[1] == note and sum(line.startswith("note:") for line in lines) == 1


def test_bfloat16_safetensors_are_read_and_judged_by_the_declared_row(cases, tmp_path):
    """What a bfloat16 engine writes (safetensors BF16, which NumPy has no type for) is widened
    exactly to float32: it meets its declared row, and not the float32 one."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    directory = tmp_path / "logits"
    directory.mkdir()
    for case in cases:
        save_torch({"logits": torch.from_numpy(golden(case)).to(torch.bfloat16)},
                   str(directory / f"{case.name}.safetensors"))
    declared = check_directory(ARCH, directory, "bfloat16")
    assert [v.result.status for v in declared] == ["PASS"] * len(cases)
    assert any(v.result.status == FAIL for v in check_directory(ARCH, directory, "float32"))


def test_a_dangling_link_with_a_cases_name_is_an_error_not_a_missing_file(cases, tmp_path, capsys):
    directory = write(tmp_path / "logits", cases[1:], golden)
    (directory / f"{cases[0].name}.npy").symlink_to(tmp_path / "nowhere.npy")
    status, out, err = check(capsys, directory)
    assert status == 2 and "PASS" not in out
    assert f"{cases[0].name}.npy: a link to {tmp_path / 'nowhere.npy'}, which does not exist" in err


def test_an_empty_or_absent_logits_folder_is_refused_by_name(tmp_path, capsys, monkeypatch):
    """An empty --logits (an unset shell variable) must not judge the current folder."""
    monkeypatch.chdir(tmp_path)
    status, out, err = check(capsys, "")
    assert status == 2 and "--logits is empty (an unset shell variable?)" in err and "PASS" not in out
    status, _, err = check(capsys, tmp_path / "absent")
    assert status == 2 and f"--logits {tmp_path / 'absent'}: does not exist" in err


def test_a_header_declaring_terabytes_is_refused_on_its_shape_before_any_read(cases, tmp_path, capsys):
    """The shape is read from the header: a file declaring 8 TB is named with its shape, at once."""
    directory = tmp_path / "logits"
    directory.mkdir()
    declared = (2, 10**6, 10**6)
    with open(directory / f"{cases[0].name}.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": declared})
        f.write(b"\0" * 64)
    status, _, err = check(capsys, directory)
    assert status == 2 and f"{cases[0].name}.npy: shape {declared}, expected" in err


def test_every_bad_file_is_named_not_only_the_first(cases, tmp_path, capsys):
    directory = write(tmp_path / "logits", cases[:2], lambda case: golden(case)[:, :-1])
    status, _, err = check(capsys, directory)
    assert status == 2 and err.startswith("lmref check: error: 2 files cannot be judged:\n")
    assert all(f"{case.name}.npy: shape" in err for case in cases[:2])


def test_files_check_cannot_read_are_noted_never_silently_skipped(cases, tmp_path, capsys):
    """An .npz archive, a case's name with another suffix and a .npy naming no case are each
    noted under the verdicts (their cases show NOT SUPPORTED)."""
    directory = write(tmp_path / "logits", cases[:1], golden)
    np.savez(directory / "all.npz", **{case.name: golden(case) for case in cases})
    golden(cases[1]).tofile(directory / f"{cases[1].name}.bin")
    np.save(directory / "prefil-b2-s7.npy", golden(cases[0]))
    status, out, _ = check(capsys, directory)
    assert status == 0
    assert sorted(out.splitlines()[-4:-1]) == sorted([
        "note: all.npz is not read: save each case's logits as <case>.npy (numpy.save) or <case>.safetensors",
        f"note: {cases[1].name}.bin is not read: save each case's logits as <case>.npy (numpy.save) or "
        "<case>.safetensors",
        f"note: prefil-b2-s7.npy names no case of {ARCH}; ignored"])
