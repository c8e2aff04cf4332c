"""`lmref export --ort-contrib --genai-eos ID` (export/genai.py): the graph in onnxruntime-genai's
own generator.

- its greedy tokens equal the golden's (impl_numpy.forward, token by token) on a batch of two
  prompts holding token 0, for a dense LLaMA and a mixture of experts, through the generator's
  shared KV buffer;
- the end token is live: made the first token row 0 picks, that row stops there and is padded;
- a ragged batch padded on the right with that token gives each row its own prompt's tokens
  (padded on the left, the pads are read as tokens: the generator's convention, not ours);
- genai_config.json is listed in export.json with its sha256, and a re-export without
  --genai-eos removes it;
- refused before writing a config (GenaiError, exit 2 from the command line): the plain graph,
  an id outside the vocabulary, a vision tower, a graph whose layers keep a Concat cache.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

og = pytest.importorskip("onnxruntime_genai")  # the `genai` extra (pyproject.toml); `make install` has it

from lmref.cli import main  # noqa: E402
from lmref.export.errors import GenaiError  # noqa: E402
from lmref.export.exporter import export_preset  # noqa: E402
from lmref.export.genai import GENAI_CONFIG_FILE  # noqa: E402
from lmref.impl_numpy import forward  # noqa: E402
from lmref.spec.params import init_params  # noqa: E402
from lmref.spec.presets import tiny  # noqa: E402

PROMPT, NEW = 9, 6


def prompts(config) -> np.ndarray:
    tokens = np.random.default_rng(0).integers(1, config.vocab_size, (2, PROMPT))  # [2, P]
    tokens[0, 4] = tokens[1, 0] = 0  # token 0 is a token like any other (genai pads with pad_token_id)
    return tokens


def golden_greedy(config, tokens: np.ndarray, steps: int) -> np.ndarray:
    """[B, steps] greedy continuation by the float64 golden."""
    params = init_params(config, 0)
    for _ in range(steps):
        tokens = np.concatenate([tokens, forward(config, params, tokens)[:, -1].argmax(-1)[:, None]], axis=1)
    return tokens[:, -steps:]


def genai_greedy(out, tokens: np.ndarray, steps: int) -> np.ndarray:
    """[B, steps]: the generator's tokens after `tokens` (a row that ended is padded by it)."""
    model = og.Model(str(out))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=tokens.shape[1] + steps, batch_size=tokens.shape[0], do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(tokens.astype(np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    return np.stack([generator.get_sequence(i)[tokens.shape[1]:] for i in range(tokens.shape[0])])


@pytest.mark.parametrize("arch", ["llama3", "mixtral-8x7b"])
def test_generator_tokens_equal_the_golden(tmp_path, arch):
    config = tiny(arch)
    tokens = prompts(config)
    expected = golden_greedy(config, tokens, NEW)
    eos = min(set(range(config.vocab_size)) - set(expected.ravel().tolist()))  # never picked: no early stop
    export_preset(arch, 0, tmp_path, ort_contrib=True, genai_eos=eos)
    written = json.loads((tmp_path / GENAI_CONFIG_FILE).read_text())
    assert written["search"]["past_present_share_buffer"] is True
    assert written["model"]["eos_token_id"] == eos
    np.testing.assert_array_equal(genai_greedy(tmp_path, tokens, NEW), expected)


def test_end_token_stops_the_row(tmp_path):
    config = tiny("llama3")
    tokens = prompts(config)
    expected = golden_greedy(config, tokens, NEW)
    eos = int(expected[0, 0])
    assert (expected[0, 1:] != eos).any(), "the check needs a row 0 that goes on past its first token"
    export_preset("llama3", 0, tmp_path, ort_contrib=True, genai_eos=eos)
    got = genai_greedy(tmp_path, tokens, NEW)
    assert (got[0] == eos).all()  # stopped at its first token, then padded with pad_token_id (= eos)


def test_ragged_batch_is_padded_on_the_right(tmp_path):
    """onnxruntime-genai 0.18 takes a ragged batch padded on the right with pad_token_id (= the
    end token): each row continues its own prompt.  Pads on the left it reads as tokens."""
    config = tiny("llama3")
    tokens, short = prompts(config), 5
    expected = np.concatenate([golden_greedy(config, tokens[:1], NEW), golden_greedy(config, tokens[1:, :short], NEW)])
    eos = max(set(range(config.vocab_size)) - set(expected.ravel().tolist()) - set(tokens.ravel().tolist()))
    export_preset("llama3", 0, tmp_path, ort_contrib=True, genai_eos=eos)
    right = tokens.copy()
    right[1, short:] = eos  # [2, P]: row 1 is its first `short` tokens, then pads
    np.testing.assert_array_equal(genai_greedy(tmp_path, right, NEW), expected)
    left = np.concatenate([np.full((1, PROMPT - short), eos), tokens[1:, :short]], axis=1)  # [1, P]
    as_tokens = golden_greedy(config, left, NEW)
    assert (as_tokens != expected[1:]).any(), "the check needs pads that change row 1's tokens when read as tokens"
    np.testing.assert_array_equal(genai_greedy(tmp_path, left, NEW), as_tokens)


def test_config_is_listed_and_removed_by_a_plain_reexport(tmp_path):
    export_preset("llama3", 0, tmp_path, ort_contrib=True, genai_eos=0)
    files = json.loads((tmp_path / "export.json").read_text())["files"]
    assert GENAI_CONFIG_FILE in files
    assert files[GENAI_CONFIG_FILE]["bytes"] == (tmp_path / GENAI_CONFIG_FILE).stat().st_size
    export_preset("llama3", 0, tmp_path, ort_contrib=True)
    assert not (tmp_path / GENAI_CONFIG_FILE).exists()


@pytest.mark.parametrize("arch, contrib, eos, message", [
    ("llama3", False, 0, "goes with --ort-contrib"),
    ("llama3", True, 251, r"in \[0, 251\)"),
    ("llava-1.5-7b", True, 0, "vision tower"),
    ("mistral-7b", True, 0, "0 of 2 layers' attention became GroupQueryAttention"),  # sliding: a Concat cache
])
def test_refused(tmp_path, arch, contrib, eos, message):
    assert tiny("llama3").vocab_size == 251
    with pytest.raises(GenaiError, match=message):
        export_preset(arch, 0, tmp_path / "out", ort_contrib=contrib, genai_eos=eos)
    assert not (tmp_path / "out").exists()  # refused before OUT was made, the trace's verdict included


def test_command_line_refusal_exits_2(tmp_path, capsys):
    assert main(["export", "--preset", "llama3", "--out", str(tmp_path / "out"), "--genai-eos", "0"]) == 2
    assert "--genai-eos goes with --ort-contrib" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
