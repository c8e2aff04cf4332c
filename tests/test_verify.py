"""`lmref verify` (conformance/verify.py, verify_weights.py, verify_report.py, lmref/commands/verify.py)
on tiny Hugging Face directories written by transformers' own `save_pretrained`.

The layered golden must be impl_numpy's forward to the bit; `--impl hf` and `--impl torch` must
PASS; an implementation with one weight of layer 1 broken must FAIL with layer 1 named; a sharded
directory must give the same run; the reader must never hold two groups of weights at once; bad
directories must be refused with a message naming the problem.
"""

from __future__ import annotations

import json
import os
import weakref
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lmref import impl_numpy  # noqa: E402
from lmref.cli import main  # noqa: E402
from lmref.conformance.adapters import as_adapter  # noqa: E402
from lmref.conformance.verify import fixed_prompt, layered_forward, verify  # noqa: E402
from lmref.conformance.verify_weights import LayeredCheckpoint  # noqa: E402
from lmref.convert import from_hf  # noqa: E402
from lmref.impl_torch.adapter import TorchAdapter  # noqa: E402

SMALL = dict(vocab_size=97, bos_token_id=None, eos_token_id=None, pad_token_id=None)
LLAMA = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=64, **SMALL)
GPT2 = transformers.GPT2Config(n_embd=48, n_layer=2, n_head=4, n_positions=32, **SMALL)  # tied head, learned positions


def save(directory, config, cls, **kwargs):
    torch.manual_seed(0)
    cls(config).save_pretrained(directory, **kwargs)
    return directory


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save(tmp_path_factory.mktemp("llama"), LLAMA, transformers.LlamaForCausalLM)


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory):
    return save(tmp_path_factory.mktemp("sharded"), LLAMA, transformers.LlamaForCausalLM, max_shard_size="40KB")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return save(tmp_path_factory.mktemp("gpt2"), GPT2, transformers.GPT2LMHeadModel)


class PerturbedLayer1:
    """The torch twin with layer 1's MLP down-projection scaled by 1.01: a broken implementation
    whose first wrong intermediate is layer 1's MLP output."""

    name = "torch-layer1-broken"
    version = "test"
    dtype = "float32"

    def __init__(self):
        self.torch = TorchAdapter()

    @staticmethod
    def _broken(params: dict) -> dict:
        return params | {"layers.1.mlp.w_down": params["layers.1.mlp.w_down"] * 1.01}

    def forward(self, config, params, tokens):
        return self.torch.forward(config, self._broken(params), tokens)

    def capture(self, config, params, tokens):
        return self.torch.capture(config, self._broken(params), tokens)


class BadCaptures:
    """The torch twin's logits, right, with captures the suite's capture check fails: `kind`
    "misshaped" (layer 1's MLP output cut short), "none" (nothing captured), "unknown" (only
    names the golden does not have), "logits" (nothing but the logits)."""

    version, dtype = "test", "float32"

    def __init__(self, kind: str):
        self.name, self.kind, self.torch = f"bad-captures-{kind}", kind, TorchAdapter()

    def forward(self, config, params, tokens):
        return self.torch.forward(config, params, tokens)

    def capture(self, config, params, tokens):
        captured = self.torch.capture(config, params, tokens)
        return {"misshaped": captured | {"layers.1.mlp": captured["layers.1.mlp"][:, :-1]}, "none": {},
                "unknown": {"my.layer": captured["logits"]}, "logits": {"logits": captured["logits"]}}[self.kind]


def run_cli(*args: str) -> int:
    return main(["verify", *args])


# --- the layered golden is the golden --------------------------------------------------------


@pytest.mark.parametrize("fixture", ["llama_dir", "gpt2_dir"])
def test_layered_forward_is_the_golden_to_the_bit(fixture, request):
    directory = request.getfixturevalue(fixture)
    config, params = from_hf(directory)
    params = {k: v.astype(np.float64) for k, v in params.items()}
    tokens = fixed_prompt(config.vocab_size)
    want_capture, got_capture = {}, {}
    want = impl_numpy.forward(config, params, tokens, capture=want_capture)
    got = layered_forward(LayeredCheckpoint(directory), tokens, got_capture)
    assert np.array_equal(got, want)
    assert list(got_capture) == list(want_capture)
    assert all(np.array_equal(got_capture[k], want_capture[k]) for k in want_capture)


def test_the_reader_reads_what_from_hf_reads(sharded_dir, llama_dir):
    _, params = from_hf(llama_dir)
    for directory in (llama_dir, sharded_dir):
        read = LayeredCheckpoint(directory).read_all()
        assert list(read) == list(params)
        assert all(read[k].dtype == np.float64 and np.array_equal(read[k], params[k]) for k in params)
    assert len(list(sharded_dir.glob("*.safetensors"))) > 2  # really sharded


class CountingCheckpoint(LayeredCheckpoint):
    """Records, at every read, which groups still have an array alive (weakref finalizers)."""

    def __init__(self, directory):
        super().__init__(directory)
        self.alive: Counter = Counter()
        self.reads: list[tuple[str, list[str]]] = []

    def read(self, group):
        self.reads.append((group, sorted(g for g, n in self.alive.items() if n)))
        params = super().read(group)
        for array in params.values():
            self.alive[group] += 1
            weakref.finalize(array, self.alive.subtract, [group])
        return params


@pytest.mark.parametrize("fixture", ["llama_dir", "gpt2_dir"])
def test_the_golden_holds_one_group_of_weights_at_a_time(fixture, request):
    checkpoint = CountingCheckpoint(request.getfixturevalue(fixture))
    layered_forward(checkpoint, fixed_prompt(checkpoint.config.vocab_size), {})
    assert [group for group, _ in checkpoint.reads] == checkpoint.group_names()
    assert all(held == [] for _, held in checkpoint.reads), checkpoint.reads  # nothing earlier still alive


# --- the command ---------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["hf", "torch"])
def test_a_correct_implementation_passes(impl, llama_dir, capsys):
    assert run_cli("--hf-dir", str(llama_dir), "--impl", impl, "--captures") == 0
    out = capsys.readouterr().out
    assert "first diverging layer: none" in out and out.rstrip().endswith("verdict: PASS")


def test_a_second_family_passes(gpt2_dir, capsys):
    assert run_cli("--hf-dir", str(gpt2_dir), "--impl", "torch", "--captures") == 0
    assert "layers.1 " in capsys.readouterr().out


def test_a_broken_layer_is_named(llama_dir, tmp_path, capsys):
    report = tmp_path / "report.json"
    assert run_cli("--hf-dir", str(llama_dir), "--impl", "tests.test_verify:PerturbedLayer1", "--captures",
                   "--report-json", str(report)) == 1
    out = capsys.readouterr().out
    assert "first diverging layer: 1 (layers.1.mlp: nmse" in out and "\nverdict: FAIL\n" in out
    data = json.loads(report.read_text())
    assert data["first_diverging_layer"] == 1 and data["first_diverging_component"] == "layers.1.mlp"
    verdicts = {c["name"]: c["diverged"] for c in data["components"]}
    assert not any(verdicts[f"layers.0.{part}"] for part in ("attn", "mlp", "out")) and not verdicts["layers.1.attn"]
    assert data["logits_failed"] and data["verdict"] == "FAIL"


@pytest.mark.parametrize("kind, said", [
    ("misshaped", "1 component(s) of the wrong shape"),
    ("none", "none of the golden's components was captured (got: nothing)"),
    ("unknown", "none of the golden's components was captured (got: my.layer)"),
    ("logits", "nothing but the logits was captured: capture must return intermediates"),
])
def test_captures_the_suite_would_fail_are_a_fail_though_the_logits_pass(kind, said, llama_dir):
    """As the suite's capture check: right logits do not make wrong captures a PASS."""
    from lmref.conformance.verify_report import report_lines

    result = verify(str(llama_dir), as_adapter(BadCaptures(kind)), captures=True)
    assert not result.logits_failed and result.divergence.first is None
    assert result.verdict == "FAIL" and result.capture_failed[-1] == said
    assert f"  failed capture check: {said}" in report_lines(result)


def test_a_broken_layer_fails_on_the_logits_alone(llama_dir):
    result = verify(str(llama_dir), as_adapter(PerturbedLayer1))
    assert result.verdict == "FAIL" and result.logits_failed and result.divergence is None


def test_sharded_gives_the_same_run(llama_dir, sharded_dir):
    one, sharded = (verify(str(d), as_adapter(TorchAdapter()), captures=True) for d in (llama_dir, sharded_dir))
    assert sharded.verdict == "PASS" and sharded.logits == one.logits and sharded.components == one.components


def test_tokens_are_taken_and_checked(llama_dir, capsys):
    assert run_cli("--hf-dir", str(llama_dir), "--impl", "numpy", "--tokens", "5,6,7") == 0
    assert "prompt: 3 tokens [5, 6, 7]" in capsys.readouterr().out
    assert run_cli("--hf-dir", str(llama_dir), "--impl", "numpy", "--tokens", "5,97") == 2
    assert "97" in capsys.readouterr().err
    assert run_cli("--hf-dir", str(llama_dir), "--impl", "numpy", "--tokens", "5,x") == 2
    assert "'x' is not an integer token id" in capsys.readouterr().err
    assert run_cli("--hf-dir", str(llama_dir), "--impl", "numpy", "--tokens", "5,99999999999999999999") == 2
    assert "99999999999999999999 is past int64, the type of token ids" in capsys.readouterr().err


def test_a_directory_without_config_is_refused(tmp_path, capsys):
    assert run_cli("--hf-dir", str(tmp_path), "--impl", "numpy") == 2
    assert f"{tmp_path / 'config.json'}: no such file" in capsys.readouterr().err


def test_an_unknown_model_type_is_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert run_cli("--hf-dir", str(tmp_path), "--impl", "numpy") == 2
    assert "model_type 'bert' is not supported" in capsys.readouterr().err


def test_the_report_is_never_written_into_the_checkpoint(llama_dir, capsys):
    assert run_cli("--hf-dir", str(llama_dir), "--impl", "numpy", "--report-json", str(llama_dir / "r.json")) == 2
    assert "lies inside the input" in capsys.readouterr().err
    assert not (llama_dir / "r.json").exists()


def test_a_report_replaces_only_an_empty_file_or_an_earlier_verify_report(llama_dir, tmp_path, capsys):
    """A file of the user's at the report's path (here a conformance report, another kind) is
    refused before the run and left as it was; an empty file, then the report it became, are
    replaced."""
    theirs = tmp_path / "theirs.json"
    theirs.write_text('{"format": "lmref-conformance-report"}')
    assert run_cli("--hf-dir", str(llama_dir), "--impl", "numpy", "--report-json", str(theirs)) == 2
    captured = capsys.readouterr()
    assert "the file exists and is not an earlier 'lmref-verify/1' report" in captured.err
    assert "verdict" not in captured.out and theirs.read_text() == '{"format": "lmref-conformance-report"}'
    target = tmp_path / "report.json"
    target.touch()
    for _ in range(2):
        assert run_cli("--hf-dir", str(llama_dir), "--impl", "numpy", "--report-json", str(target)) == 0
        assert json.loads(target.read_text())["format"] == "lmref-verify/1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "theirs.json"]  # no temporary left


def test_a_report_that_cannot_be_written_is_refused_before_the_run(llama_dir, tmp_path, capsys, monkeypatch):
    """A folder that takes no new file (a read-only one; /proc for root) is found before the
    verification runs: exit 2, one line, nothing written."""
    real_access = os.access  # root may write anywhere: the folder is made read-only by the system's answer
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != tmp_path and real_access(path, mode, **kw))
    target = tmp_path / "new" / "report.json"
    assert run_cli("--hf-dir", str(llama_dir), "--impl", "numpy", "--report-json", str(target)) == 2
    captured = capsys.readouterr()
    assert f"--report-json {target}: cannot be written (Permission denied)" in captured.err
    assert "verdict" not in captured.out and not (tmp_path / "new").exists()


def test_a_report_lost_after_the_run_is_an_error_not_a_traceback(llama_dir, tmp_path, capsys, monkeypatch):
    """A disk that fills up during the run: the verdict is printed, then one line, exit 2."""
    from lmref.conformance import verify_report

    def full(result, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(verify_report, "write_report", full)
    target = tmp_path / "report.json"
    assert run_cli("--hf-dir", str(llama_dir), "--impl", "numpy", "--report-json", str(target)) == 2
    captured = capsys.readouterr()
    assert captured.out.rstrip().endswith("verdict: PASS")
    assert f"--report-json {target}: could not be written (No space left on device)" in captured.err


def crashes(config, params, tokens):
    raise RuntimeError("the kernel fell over")


@pytest.mark.parametrize(("impl", "status", "message"), [
    ("tests.adapters_for_tests:forward_nan", "FAIL", "non-finite values"),
    ("tests.test_verify:crashes", "ERROR", "RuntimeError: the kernel fell over"),
])
def test_an_implementation_without_valid_logits_is_not_a_pass(impl, status, message, llama_dir, capsys):
    assert run_cli("--hf-dir", str(llama_dir), "--impl", impl) == 1
    out = capsys.readouterr().out
    assert message in out and f"\nverdict: {status}\n" in out


def test_a_run_override_is_said_beside_the_row(llama_dir, tmp_path, capsys):
    """A PASS under a loosened row must not read as a plain float32 PASS (as the suite's header)."""
    report = tmp_path / "report.json"
    assert run_cli("--hf-dir", str(llama_dir), "--impl", "torch", "--tolerance", "float32.nmse=1",
                   "--report-json", str(report)) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert line.endswith('; tolerance row float32; run overrides: {"float32": {"nmse": 1.0}}'), line
    assert json.loads(report.read_text())["run_overrides"] == {"float32": {"nmse": 1.0}}


@pytest.mark.parametrize(("impl", "extra", "message"), [
    ("forward_exits", [], "the adapter's worker process exited with status 0 before returning"),
    ("forward_sys_exits", [], "raised SystemExit: 0"),
    ("forward_hangs", ["--timeout", "5"], "did not return within 5 s (--timeout): its worker process was killed\n"),
])
def test_an_implementation_that_ends_its_process_or_hangs_is_an_error_not_the_end_of_verify(
        impl, extra, message, llama_dir, capsys):
    """The implementation runs in a worker process, as in the suite: verify still gives its verdict."""
    assert run_cli("--hf-dir", str(llama_dir), "--impl", f"tests.adapters_for_tests:{impl}", *extra) == 1
    out = capsys.readouterr().out
    assert message in out and out.rstrip().endswith("verdict: ERROR")


def test_weights_the_worker_cannot_read_are_bad_input(gpt2_dir, tmp_path, capsys):
    """A tied head's stored copy that differs from the embedding is found where the worker reads
    the weights: refused as bad input (exit 2), as when verify read them itself."""
    from safetensors.numpy import load_file, save_file

    directory = tmp_path / "gpt2"
    directory.mkdir()
    for p in gpt2_dir.iterdir():
        (directory / p.name).write_bytes(p.read_bytes())
    tensors = load_file(directory / "model.safetensors")
    wte = next(k for k in tensors if k.endswith("wte.weight"))
    save_file(tensors | {"lm_head.weight": tensors[wte] * 2}, str(directory / "model.safetensors"),
              metadata={"format": "pt"})
    assert run_cli("--hf-dir", str(directory), "--impl", "numpy") == 2
    assert "tie_word_embeddings is true but lm_head.weight differs from the token embedding" in capsys.readouterr().err


def test_a_timeout_that_is_no_positive_number_is_refused(llama_dir, capsys):
    for value in ("0", "-1", "nan", "inf"):
        assert run_cli("--hf-dir", str(llama_dir), "--impl", "numpy", "--timeout", value) == 2
        assert f"--timeout must be a positive number of seconds, got {float(value)}" in capsys.readouterr().err


def test_an_implementation_that_does_not_load_is_named_with_where_it_came_from(llama_dir, capsys, monkeypatch):
    assert run_cli("--hf-dir", str(llama_dir), "--impl", "no_such_module:Adapter") == 2
    assert "--impl no_such_module:Adapter: cannot import module 'no_such_module'" in capsys.readouterr().err
    monkeypatch.setenv("LMREF_IMPL", "no_such_module:Adapter")
    assert run_cli("--hf-dir", str(llama_dir)) == 2
    assert "$LMREF_IMPL no_such_module:Adapter: cannot import module 'no_such_module'" in capsys.readouterr().err
