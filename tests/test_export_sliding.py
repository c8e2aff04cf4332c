"""The ONNX graph's sliding layers keep their last W - 1 past entries (export/decoder.py): a
decode of three windows and more, token by token or after a prefill longer than the window,
feeds back presents capped at W - 1 for those layers (the global ones grow) and matches the
golden and the torch twin; validate-onnx passes with prompts past the window; a past one
entry short (W - 2) fails the comparison."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from lmref import impl_numpy  # noqa: E402
from lmref.cli import main  # noqa: E402
from lmref.export.bundle import open_bundle  # noqa: E402
from lmref.export.decoder import ConcatCache, input_names, slot_positions, window_pasts  # noqa: E402
from lmref.export.errors import BundleError  # noqa: E402
from lmref.export.exporter import export_onnx  # noqa: E402
from lmref.export.generate import generate  # noqa: E402
from lmref.export.runtime import CPU, DecoderSession, open_session  # noqa: E402
from lmref.export.validate import DEFAULT_PAD, default_prompt_len, validate  # noqa: E402
from lmref.impl_torch import Transformer  # noqa: E402
from lmref.spec import InputError, init_params, tiny  # noqa: E402
from lmref.train.generate import generate as generate_torch  # noqa: E402
from tests.torch.helpers import FLOAT32, assert_close  # noqa: E402

CONFIGS = {
    "W3-sliding-global": tiny("llama3", attn_pattern=("sliding", "global"), sliding_window=3),
    "W1-global-sliding": tiny("llama3", attn_pattern=("global", "sliding"), sliding_window=1),
    "mistral-7b": tiny("mistral-7b"),  # window 5, every layer sliding
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def exported(request, tmp_path_factory):
    """(name, config, params, bundle, DecoderSession) of each config, exported once."""
    config = CONFIGS[request.param]
    params = init_params(config, 2)
    out = tmp_path_factory.mktemp(request.param)
    export_onnx(config, params, out)
    bundle = open_bundle(out)
    return request.param, config, params, bundle, DecoderSession(open_session(bundle.model_path), config)


def tokens_for(config, length: int) -> np.ndarray:
    return np.random.default_rng(4).integers(0, config.vocab_size, size=(2, length))


def expected_lengths(config, total: int) -> list[int]:
    """Per past array, its length after `total` positions: min(total, W - 1) on sliding layers."""
    return [total if keep is None else min(total, keep) for keep in window_pasts(config) for _ in range(2)]


def run(session: DecoderSession, tokens: np.ndarray, prompt_len: int) -> tuple[np.ndarray, list[list[int]]]:
    """Logits [B, S, V] of a prefill then one token per step, and the presents' lengths per step."""
    mask = np.ones(tokens.shape, np.int64)
    logits, past = session.step(tokens[:, :prompt_len], mask[:, :prompt_len], session.empty_past(2))
    steps, lengths = [logits], [[p.shape[2] for p in past]]
    for t in range(prompt_len, tokens.shape[1]):
        logits, past = session.step(tokens[:, t : t + 1], mask[:, : t + 1], past)
        steps.append(logits)
        lengths.append([p.shape[2] for p in past])
    return np.concatenate(steps, axis=1), lengths


@pytest.mark.parametrize("prompt", ["one-token", "past-the-window"])
def test_decode_of_three_windows_with_capped_presents_matches(exported, prompt):
    """3W + 4 tokens, one per step after the prompt: every step's sliding presents hold
    min(t, W - 1) entries, the others t; the logits are the golden's and the torch twin's."""
    name, config, params, _, session = exported
    w = config.sliding_window
    tokens = tokens_for(config, 3 * w + 4)
    prompt_len = 1 if prompt == "one-token" else w + 2
    logits, lengths = run(session, tokens, prompt_len)
    assert lengths == [expected_lengths(config, t) for t in range(prompt_len, tokens.shape[1] + 1)]
    assert_close(logits, impl_numpy.forward(config, params, tokens), FLOAT32, f"{name} onnx vs golden")
    torch_model = Transformer.from_canonical(config, params)
    assert_close(logits, torch_model.decode(tokens, prompt_len).numpy(), FLOAT32, f"{name} onnx vs torch")


def test_validate_onnx_passes_with_prompts_past_the_window(exported):
    name, config, params, bundle, _ = exported
    assert default_prompt_len(config) - DEFAULT_PAD > config.sliding_window
    lines: list[str] = []
    checks = validate(bundle, params, [CPU], log=lines.append)
    assert [c.failed for c in checks] == [[]] * 4, "\n".join(lines)
    assert [c.phase.split()[0] for c in checks] == ["prefill", "decode"] * 2
    assert any("(past the window)" in line for line in lines), "\n".join(lines)


def test_lmref_validate_onnx_passes_on_a_sliding_preset(tmp_path, capsys):
    out = tmp_path / "mistral"
    assert main(["export", "--preset", "mistral-7b", "--out", str(out)]) == 0
    assert main(["validate-onnx", str(out), "--provider", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "window 5: prompts of 11 and 8 tokens (past the window)" in printed
    assert "validate-onnx: PASS (4 of 4 checks passed" in printed


def test_a_sliding_past_one_entry_short_fails(exported):
    """Negative control: the graph fed sliding pasts of W - 2 entries (bypassing the
    session's check) loses the key W - 1 back; the logits leave the float32 row."""
    name, config, params, _, session = exported
    keep = config.sliding_window - 1
    if keep < 1:
        pytest.skip("a window of 1 keeps no past entry")
    tokens = tokens_for(config, 3 * keep + 6)
    mask = np.ones(tokens.shape, np.int64)
    logits, past = session.step(tokens[:, :1], mask[:, :1], session.empty_past(2))
    steps, keeps = [logits], [k for k in window_pasts(config) for _ in range(2)]
    for t in range(1, tokens.shape[1]):
        past = [p if k is None else p[:, :, 1:] if p.shape[2] == k else p for p, k in zip(past, keeps)]
        positions = np.full((2, 1), t, np.int64)
        logits, *past = session.session.run(None, dict(zip(input_names(config.n_layers),
                                                           [tokens[:, t : t + 1], mask[:, : t + 1], positions, *past])))
        steps.append(logits)
    with pytest.raises(AssertionError, match="nmse"):
        assert_close(np.concatenate(steps, axis=1), impl_numpy.forward(config, params, tokens), FLOAT32, name)


def test_a_sliding_past_of_another_length_is_refused(exported):
    """The session checks what the graph cannot: a sliding past holds min(past, W - 1)."""
    name, config, _, _, session = exported
    tokens = tokens_for(config, 8)
    _, past = session.step(tokens[:, :7], np.ones((2, 7), np.int64), session.empty_past(2))
    layer = window_pasts(config).index(config.sliding_window - 1)
    keep = config.sliding_window - 1
    past[2 * layer] = np.zeros((2, config.n_kv_heads, 7, config.head_dim), np.float32)  # every entry
    message = (f"past_key_values.{layer}.key: a sliding layer of window {keep + 1} keeps the last "
               rf"min\(past, {keep}\) = {keep} entries after 7 positions, got 7")
    with pytest.raises(InputError, match=message):
        session.step(tokens[:, 7:], np.ones((2, 8), np.int64), past)


def test_greedy_generation_equals_the_torch_twins(exported):
    """generate --onnx's loop over capped presents gives the torch loop's tokens (greedy)."""
    _, config, params, _, session = exported
    prompt = tokens_for(config, config.sliding_window + 3)[0].tolist()
    model = Transformer.from_canonical(config, params)
    new = 3 * config.sliding_window
    assert generate(session, prompt, new, temperature=0) == generate_torch(model, prompt, new, temperature=0)


def test_the_bundle_records_and_checks_the_past_lengths(exported, tmp_path):
    name, config, _, bundle, _ = exported
    keeps = window_pasts(config)
    assert bundle.manifest["past_length"] == ["past_sequence" if k is None else f"min(past_sequence, {k})"
                                              for k in keeps]
    copy = shutil.copytree(bundle.root, tmp_path / "copy")
    manifest = json.loads((copy / "export.json").read_text())
    (copy / "export.json").write_text(json.dumps(manifest | {"past_length": ["past_sequence"] * len(keeps)}))
    with pytest.raises(BundleError, match="past_length .* is not the config's"):
        open_bundle(copy)
    (copy / "export.json").write_text(json.dumps(manifest | {"format_version": 2}))
    with pytest.raises(BundleError, match="format version 2 kept every past entry of a sliding layer"):
        open_bundle(copy)
    version3 = {k: v for k, v in manifest.items() if k != "graphs"} | {"format_version": 3}  # before `graphs`
    (copy / "export.json").write_text(json.dumps(version3))
    assert open_bundle(copy).manifest["graphs"] == {"decoder": "model.onnx"}  # a text-only bundle reads as before


def test_the_concat_cache_of_a_sliding_layer_reads_the_last_slots():
    """No export: a sliding layer (W = 3) reads its past of W - 1 with the step's keys, at the
    positions of the mask's last slots, and presents the last W - 1; the global one all."""
    config = CONFIGS["W3-sliding-global"]
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])  # 4 past positions, 2 new
    shape = (2, config.n_kv_heads, None, config.head_dim)
    past = [torch.randn(*shape[:2], n, shape[3]) for n in (2, 2, 4, 4)]
    cache = ConcatCache(past, mask, config)
    k, v = (torch.randn(2, config.n_kv_heads, 2, config.head_dim) for _ in range(2))
    keys, values, positions = cache.append(0, k, v, torch.tensor([[4, 5], [2, 3]]))
    assert torch.equal(keys, torch.cat([past[0], k], dim=2)) and torch.equal(values, torch.cat([past[1], v], dim=2))
    assert positions.tolist() == slot_positions(mask)[:, -4:].tolist() == [[2, 3, 4, 5], [0, 1, 2, 3]]
    assert torch.equal(cache.present[0], keys[:, :, -2:]) and torch.equal(cache.present[1], values[:, :, -2:])
    _, _, positions = cache.append(1, k, v, torch.tensor([[4, 5], [2, 3]]))
    assert positions.shape == (2, 6) and cache.present[2].shape[2] == 6
