"""Training a mixture of experts: the objective adds aux_loss_coef x the load-balancing loss
(pinned to the golden's math), the log records the auxiliary loss and the expert load, the
loss falls, gradient accumulation behaves as train/loop.py documents, and two processes (DDP,
FSDP) train the same model as one.

Two processes take rows [0, B/2) and [B/2, B) of each global batch; one process with
--grad-accum 2 takes the same two micro-batches in turn.  The load-balancing loss is computed
per micro-batch, so these two runs share the same objective (one process with one micro-batch
of B rows would not: see test_the_aux_loss_is_per_micro_batch), and agree to the tolerances
tests/test_train_distributed.py explains.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

for _module in ("torch", "tokenizers", "matplotlib", "tqdm"):  # the `torch` and `train` extras
    pytest.importorskip(_module)

from lmref import impl_numpy  # noqa: E402
from lmref.convert import load_checkpoint  # noqa: E402
from lmref.impl_numpy.moe import load_balancing_loss, router_z_loss  # noqa: E402
from lmref.spec.captures import moe_layers  # noqa: E402
from lmref.spec.params import init_params  # noqa: E402
from lmref.train.distributed import Dist  # noqa: E402
from lmref.train.loop import build_trainer, micro_parts, train_step  # noqa: E402
from lmref.train.settings import RunSettings, model_config  # noqa: E402
from tests.train_helpers import lmref, one_thread, records, torchrun_train  # noqa: E402

ARCH = "mixtral-8x7b"  # 8 experts, top 2, renormalised, aux_loss_coef 0.02
ARGS = ["--arch", ARCH, "--seq-len", "32", "--batch-size", "8", "--warmup", "2", "--eval-batches", "1",
        "--no-progress", "--d-model", "32", "--n-heads", "2", "--steps", "4", "--eval-every", "2"]


def _trainer(accum: int = 1, aux_loss_coef: float | None = None, arch: str = ARCH):
    run = RunSettings(arch=arch, batch_size=4, seq_len=16)
    config = model_config(arch, {"d_model": 32, "n_heads": 2}, vocab_size=256)
    if aux_loss_coef is not None:
        config = dataclasses.replace(config, moe=dataclasses.replace(config.moe, aux_loss_coef=aux_loss_coef))
    params = {k: v.astype(np.float32) for k, v in init_params(config, 0).items()}
    return build_trainer(config, params, run, Dist(), accum=accum), params


@pytest.mark.parametrize("arch", [ARCH, "olmoe-1b-7b"])
def test_the_objective_is_the_golden_cross_entropy_plus_the_weighted_aux_losses(arch):
    """On windows [b, T + 1] the trainer forwards T tokens: the golden's cross-entropy of the
    window plus aux_loss_coef x its load-balancing loss over those T positions (Mixtral's
    pooled, OLMoE's per layer) and router_z_loss_coef x its router z-loss (OLMoE)."""
    trainer, params = _trainer(arch=arch)
    config = trainer.core.config
    m = config.moe
    windows = np.random.default_rng(0).integers(0, 256, (4, 17))
    with one_thread():
        parts = {name: value.detach() for name, value in micro_parts(trainer, windows).items()}
    captured: dict = {}
    impl_numpy.forward(config, params, windows[:, :-1], capture=captured)
    routers = [captured[f"layers.{i}.router"] for i in moe_layers(config)]
    aux = load_balancing_loss(config, routers)
    z_loss = router_z_loss(config, routers) if m.router_z_loss_coef > 0 else 0.0
    assert m.aux_loss_coef > 0 and (m.router_z_loss_coef > 0) == (arch != ARCH)
    without_aux = dataclasses.replace(m, aux_loss_coef=0.0, router_z_loss_coef=0.0)
    ce = impl_numpy.loss(dataclasses.replace(config, moe=without_aux), params, windows)
    assert float(parts["aux"]) == pytest.approx(aux, rel=1e-5)
    assert float(parts.get("z_loss", 0.0)) == pytest.approx(z_loss, rel=1e-5)
    assert float(parts["ce"]) == pytest.approx(ce, rel=1e-5)
    assert float(parts["loss"]) == pytest.approx(ce + m.aux_loss_coef * aux + m.router_z_loss_coef * z_loss, rel=1e-5)
    assert parts["expert_load"].shape == (config.n_layers, m.n_experts)


def test_accumulation_without_aux_matches_one_big_batch():
    """The cross-entropy part is split-invariant, for a mixture as for a dense model."""
    batches = np.random.default_rng(1).integers(0, 256, (2, 4, 17))
    with one_thread():
        (whole, _), (split, _) = _trainer(1, aux_loss_coef=0.0), _trainer(2, aux_loss_coef=0.0)
        for batch in batches:
            a, b = train_step(whole, [batch]), train_step(split, np.split(batch, 2))
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
            np.testing.assert_allclose(b["expert_load"], a["expert_load"], atol=1e-6)  # equal halves: the mean


def test_the_aux_loss_is_per_micro_batch():
    """With --grad-accum 2 the step's aux is the mean of the two halves' aux (what backward
    took), not the aux of the whole batch: the loss is not linear in the rows it sees."""
    batch = np.random.default_rng(2).integers(0, 256, (4, 17))
    with one_thread():
        (probe, _), (whole, _), (split, _) = _trainer(1), _trainer(1), _trainer(2)
        halves = [micro_parts(probe, half)["aux"].item() for half in np.split(batch, 2)]
        together = micro_parts(probe, batch)["aux"].item()
        assert train_step(split, np.split(batch, 2))["aux"] == pytest.approx(np.mean(halves), rel=1e-6)
        assert train_step(whole, [batch])["aux"] == pytest.approx(together, rel=1e-6)
    assert abs(together - np.mean(halves)) > 1e-4


def test_a_step_logs_the_router_z_loss_where_it_is_weighted():
    """OLMoE's step records "z_loss" (what its objective weights by 0.001); Mixtral's has none."""
    batch = np.random.default_rng(2).integers(0, 256, (4, 17))
    with one_thread():
        olmoe, mixtral = train_step(_trainer(arch="olmoe-1b-7b")[0], [batch]), train_step(_trainer()[0], [batch])
    assert np.isfinite(olmoe["z_loss"]) and olmoe["z_loss"] > 0 and olmoe["aux"] > 0
    assert "z_loss" not in mixtral


def test_a_mixture_trains_and_logs_its_aux_loss_and_expert_load(tmp_path):
    out = tmp_path / "run"
    assert lmref("train", *ARGS[:-4], "--steps", "30", "--lr", "1e-2", "--eval-every", "30", "--out", out) == 0
    config = records(out, "run")[0]["config"]
    assert config["moe"]["n_experts"] == 8 and config["mlp_pattern"] == ["moe"]
    train = records(out, "train")
    assert [r["step"] for r in train] == list(range(1, 31))
    for r in train:
        load = np.array(r["expert_load"])  # [moe layer, expert]
        assert load.shape == (2, 8) and np.allclose(load.sum(axis=1), 1.0)
        assert np.isfinite(r["aux"]) and r["aux"] > 0
    val = records(out, "val")
    assert val[-1]["step"] == 30 and val[-1]["val_loss"] < val[0]["val_loss"] - 1.5


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single-moe") / "run"
    assert lmref("train", *ARGS, "--grad-accum", "2", "--out", out) == 0
    return out


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_processes_train_a_mixture_as_one(single, tmp_path, fsdp):
    """DDP runs without find_unused_parameters: every expert is in the graph at every step."""
    result = torchrun_train(tmp_path / "run", *ARGS, *(["--fsdp"] if fsdp else []))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 process(es)" in result.stdout
    for kind, keys in (("train", ("loss", "aux")), ("val", ("val_loss",))):
        a, b = records(single, kind), records(tmp_path / "run", kind)
        assert [r["step"] for r in a] == [r["step"] for r in b]
        for key in keys:
            np.testing.assert_allclose([r[key] for r in b], [r[key] for r in a], rtol=1e-5, err_msg=key)
    np.testing.assert_allclose([r["expert_load"] for r in records(tmp_path / "run", "train")],
                               [r["expert_load"] for r in records(single, "train")], atol=1e-6)
    _, expected = load_checkpoint(single / "step-000004")
    _, actual = load_checkpoint(tmp_path / "run" / "step-000004")
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=0, atol=1e-4, err_msg=name)
