"""Training PaLM: the objective adds logit_z_loss_coef x the logit z-loss (pinned to the
golden's `loss`), each step's record holds it as "logit_z_loss", a non-finite one stops the
run, and `lmref train` / `lmref generate` run on the tiny PaLM."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

for _module in ("torch", "tokenizers", "matplotlib", "tqdm"):  # the `torch` and `train` extras
    pytest.importorskip(_module)

from lmref import impl_numpy  # noqa: E402
from lmref.impl_numpy.model import logit_z_loss  # noqa: E402
from lmref.spec.params import init_params  # noqa: E402
from lmref.train.distributed import Dist  # noqa: E402
from lmref.train.errors import DivergedError  # noqa: E402
from lmref.train.loop import build_trainer, check_finite, micro_parts, train_step  # noqa: E402
from lmref.train.settings import RunSettings, model_config  # noqa: E402
from tests.train_helpers import lmref, one_thread, records  # noqa: E402

ARCH = "palm-8b"  # logit_z_loss_coef 1e-4, logits scaled by d_model^-0.5


def _trainer(arch: str = ARCH):
    run = RunSettings(arch=arch, batch_size=4, seq_len=16)
    config = model_config(arch, {}, vocab_size=256)
    params = {k: v.astype(np.float32) for k, v in init_params(config, 0).items()}
    return build_trainer(config, params, run, Dist()), params


def test_the_objective_is_the_golden_loss_with_its_logit_z_loss():
    """On windows [b, T + 1] the trainer forwards T tokens, all with a target: its objective is
    the golden's loss of the window, the cross-entropy plus 1e-4 x the mean logsumexp^2 of
    those T positions' logits."""
    trainer, params = _trainer()
    config = trainer.core.config
    windows = np.random.default_rng(0).integers(0, 256, (4, 17))
    with one_thread():
        parts = {name: float(value.detach()) for name, value in micro_parts(trainer, windows).items()}
    logits = impl_numpy.forward(config, params, windows[:, :-1]).astype(np.float64)  # [4, 16, 256]
    z = logit_z_loss(logits)
    ce = impl_numpy.loss(dataclasses.replace(config, logit_z_loss_coef=0.0), params, windows)
    assert config.logit_z_loss_coef == 1e-4 and z > 1.0
    assert parts["logit_z_loss"] == pytest.approx(z, rel=1e-5)
    assert parts["ce"] == pytest.approx(ce, rel=1e-5)
    assert parts["loss"] == pytest.approx(ce + 1e-4 * z, rel=1e-6)
    assert parts["loss"] == pytest.approx(impl_numpy.loss(config, params, windows), rel=1e-6)
    assert parts["loss"] - parts["ce"] == pytest.approx(1e-4 * z, rel=1e-3)  # the term itself, float32


def test_a_step_logs_the_logit_z_loss_where_it_is_weighted():
    """PaLM's step records "logit_z_loss"; Llama 3's, whose objective has none, does not."""
    batch = np.random.default_rng(2).integers(0, 256, (4, 17))
    with one_thread():
        palm, llama = train_step(_trainer()[0], [batch]), train_step(_trainer("llama3")[0], [batch])
    assert math.isfinite(palm["logit_z_loss"]) and palm["logit_z_loss"] > 1.0
    assert "logit_z_loss" not in llama


def test_a_non_finite_logit_z_loss_stops_the_run():
    with pytest.raises(DivergedError, match="step 3: training diverged: the logit z-loss is nan"):
        check_finite(3, {"loss": 2.0, "logit_z_loss": float("nan"), "grad_norm": 1.0})


def test_train_and_generate_run_on_palm(tmp_path, capsys):
    out = tmp_path / "run"
    assert lmref("train", "--arch", ARCH, "--steps", "2", "--seq-len", "32", "--batch-size", "4",
                 "--eval-batches", "1", "--no-progress", "--out", out) == 0
    assert "logit z-loss" in capsys.readouterr().out
    steps = records(out, "train")
    assert [r["step"] for r in steps] == [1, 2] and all(math.isfinite(r["logit_z_loss"]) for r in steps)
    assert lmref("generate", "--checkpoint", out, "--prompt", "def ", "--max-new-tokens", "8", "--seed", "1") == 0
    assert capsys.readouterr().out.startswith("def ")
