"""What the ONNX runtime path promises about its inputs (issue 10, item 13; the "Guarantees"
section of docs/onnx.md points here): DecoderSession, OnnxAdapter and generate --onnx refuse
bad tokens, a batch of 0, a bad attention mask or position ids, and a context overrun before
onnxruntime runs, with spec.inputs' messages.  The export's own guarantees:
tests/test_guarantees_onnx.py.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from lmref.export.bundle import open_bundle  # noqa: E402
from lmref.export.exporter import export_onnx  # noqa: E402
from lmref.export.generate import generate  # noqa: E402
from lmref.export.onnx_adapter import OnnxAdapter  # noqa: E402
from lmref.export.runtime import DecoderSession, open_session  # noqa: E402
from lmref.spec import InputError, init_params, tiny  # noqa: E402
from lmref.spec.inputs import check_tokens  # noqa: E402

SHORT = tiny("llama3", max_seq_len=16)  # vocab 251, a context short enough to run past


@pytest.fixture(scope="module")
def short(tmp_path_factory):
    """(bundle, DecoderSession) of tiny llama3 with max_seq_len 16."""
    out = tmp_path_factory.mktemp("short")
    export_onnx(SHORT, init_params(SHORT, 0), out)
    bundle = open_bundle(out)
    return bundle, DecoderSession(open_session(bundle.model_path), bundle.config)


# --- item 13: the ONNX path checks its inputs as the other backends do ----------------------

BAD_TOKENS = [
    ("float", np.array([[1.7, 2.2]])),
    ("bool", np.array([[True, False]])),
    ("1-D", np.array([1, 2, 3])),
    ("3-D", np.ones((1, 2, 3), dtype=np.int64)),
    ("empty-seq", np.zeros((2, 0), dtype=np.int64)),
    ("negative", np.array([[1, 2], [3, -1]])),
    ("too-big", np.array([[1, 251], [3, 4]])),
    ("way-too-big", np.array([[10**12]])),
    ("too-long", np.ones((1, 17), dtype=np.int64)),
]


def _message(tokens, past_len: int = 0) -> str:
    """spec.inputs' message for `tokens`: what every backend says."""
    with pytest.raises(InputError) as info:
        check_tokens(SHORT, tokens, past_len=past_len)
    return str(info.value)


@pytest.mark.parametrize("label,tokens", BAD_TOKENS, ids=[b[0] for b in BAD_TOKENS])
def test_decoder_session_refuses_bad_tokens_with_the_backends_message(short, label, tokens):
    """issue 10, item 13: DecoderSession.step and prefill_and_decode refuse bad tokens before
    onnxruntime runs (no wrap of -1 to the last row, no truncated float, no raw onnxruntime
    error), with spec.inputs' very message."""
    _, session = short
    expected = _message(tokens)
    with pytest.raises(InputError) as info:
        session.prefill_and_decode(tokens, 1)
    assert str(info.value) == expected
    batch = tokens.shape[0] if tokens.ndim == 2 else 1
    seq = tokens.shape[1] if tokens.ndim == 2 else 3
    with pytest.raises(InputError) as info:
        session.step(tokens, np.ones((batch, seq), np.int64), session.empty_past(batch))
    assert str(info.value) == expected


@pytest.mark.parametrize("label,tokens", BAD_TOKENS, ids=[b[0] for b in BAD_TOKENS])
def test_onnx_adapter_refuses_bad_tokens_with_the_backends_message(label, tokens):
    """issue 10, item 13: OnnxAdapter's forward, decode and loss refuse bad tokens with
    spec.inputs' message, before exporting anything."""
    adapter, params = OnnxAdapter(), init_params(SHORT, 0)
    expected = _message(tokens)
    for call in (lambda: adapter.forward(SHORT, params, tokens), lambda: adapter.decode(SHORT, params, tokens, 1),
                 lambda: adapter.loss(SHORT, params, tokens)):
        with pytest.raises(InputError) as info:
            call()
        assert str(info.value) == expected
    assert adapter.exports == 0


def test_batch_zero_is_refused_not_a_crash(short):
    """issue 10, item 13: batch 0 used to kill the Python process (SIGFPE in onnxruntime); run
    in a child process so that the crash shows as a failure."""
    bundle, _ = short
    script = (
        "import numpy as np\n"
        "from lmref.export.bundle import open_bundle\n"
        "from lmref.export.runtime import DecoderSession, open_session\n"
        "from lmref.spec import InputError\n"
        f"b = open_bundle({str(bundle.root)!r})\n"
        "s = DecoderSession(open_session(b.model_path), b.config)\n"
        "for call in (lambda: s.prefill_and_decode(np.zeros((0, 3), np.int64), 3),\n"
        "             lambda: s.step(np.zeros((0, 3), np.int64), np.ones((0, 3), np.int64), s.empty_past(0))):\n"
        "    try:\n"
        "        call()\n"
        "    except InputError as e:\n"
        "        print(e)\n")
    run = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-2000:]}"
    expected = _message(np.zeros((0, 3), np.int64))
    assert run.stdout.splitlines() == [expected, expected]


def test_the_context_counts_the_graphs_past(short):
    """issue 10, item 13: a step past the context is refused, counting the past it is given,
    with spec.inputs' message; a past of another batch is refused as the KV caches refuse it."""
    _, session = short
    tokens = np.ones((1, 14), np.int64)
    _, past = session.step(tokens, np.ones((1, 14), np.int64), session.empty_past(1))
    session.step(np.ones((1, 2), np.int64), np.ones((1, 16), np.int64), past)  # fills 16: fine
    with pytest.raises(InputError) as info:
        session.step(np.ones((1, 3), np.int64), np.ones((1, 17), np.int64), past)
    assert str(info.value) == _message(np.ones((1, 3), np.int64), past_len=14)
    with pytest.raises(InputError, match="tokens have batch 2 but the KV cache holds batch 1"):
        session.step(np.ones((2, 1), np.int64), np.ones((2, 15), np.int64), past)


@pytest.mark.parametrize("mask, message", [
    (np.ones((1, 14), np.int64), r"attention_mask must have shape \[batch, past \+ seq\] = \[1, 15\], got \(1, 14\)"),
    (np.full((1, 15), 2, np.int64), r"attention_mask must hold only 0 and 1, got 2 at \(0, 0\)"),
    (np.ones((1, 15), np.float32), r"attention_mask must be an integer or bool array, got dtype float32"),
])
def test_a_bad_attention_mask_is_refused(short, mask, message):
    """issue 10, item 13: the graph's other inputs are checked as well (the mask, its length
    against past + new tokens)."""
    _, session = short
    _, past = session.step(np.ones((1, 14), np.int64), np.ones((1, 14), np.int64), session.empty_past(1))
    with pytest.raises(InputError, match=message):
        session.step(np.ones((1, 1), np.int64), mask, past)


@pytest.mark.parametrize("positions, message", [
    (np.array([[16]]), r"position id 16 at \(0, 0\) is out of range for max_seq_len=16"),
    (np.array([[-1]]), r"position id -1 at \(0, 0\) is negative"),
    (np.array([[1, 2]]), r"position_ids must have the shape of the tokens \(1, 1\), got \(1, 2\)"),
])
def test_bad_position_ids_are_refused(short, positions, message):
    """issue 10, item 13: explicit position_ids stay inside the context (a learned-position
    model has no row past it)."""
    _, session = short
    with pytest.raises(InputError, match=message):
        session.step(np.ones((1, 1), np.int64), np.ones((1, 1), np.int64), session.empty_past(1), positions)


def test_generate_with_the_graph_refuses_bad_ids_as_the_torch_generate_does(short):
    """issue 10, item 13: export.generate (generate --onnx) refuses a prompt id out of range
    with the message train/generate.py's torch loop gives."""
    from lmref.impl_torch import Transformer
    from lmref.train.generate import generate as generate_torch

    _, session = short
    model = Transformer.from_canonical(SHORT, init_params(SHORT, 0)).eval()
    for prompt in ([3, -1], [3, 251]):
        with pytest.raises(InputError) as torch_error:
            generate_torch(model, prompt, 2, temperature=0)
        with pytest.raises(InputError) as onnx_error:
            generate(session, prompt, 2, temperature=0)
        assert str(onnx_error.value) == str(torch_error.value)
