"""The loss curves of a run as a PNG, drawn with matplotlib's Agg backend (no display needed):
`plot_losses` for a text run, `plot_caption_losses` for a vision run (its text-only baseline
beside the image model, the stages shaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PLOT_FILE = "loss.png"


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Moving average over the last `window` values (shorter at the start)."""
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    lengths = np.minimum(np.arange(1, len(values) + 1), window)
    return (cumulative[1:] - cumulative[np.arange(1, len(values) + 1) - lengths]) / lengths


def plot_losses(records: list[dict], path: str | Path, title: str = "") -> Path:
    """Training loss (raw and smoothed), validation loss and the unigram baseline by step."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    train = {r["step"]: r["loss"] for r in records if r.get("kind") == "train"}
    val = {r["step"]: r["val_loss"] for r in records if r.get("kind") == "val"}
    baselines = [r["unigram_baseline"] for r in records if r.get("kind") == "run" and "unigram_baseline" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        steps, losses = np.array(sorted(train)), np.array([train[s] for s in sorted(train)])
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="train (per step)")
        ax.plot(steps, _smooth(losses, max(1, len(losses) // 20)), color="tab:blue", label="train (smoothed)")
    if val:
        ax.plot(sorted(val), [val[s] for s in sorted(val)], "o-", color="tab:orange", markersize=3, label="validation")
    if baselines:
        ax.axhline(baselines[-1], color="gray", linestyle="--", linewidth=1, label="unigram baseline (val)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


# The phases of a vision run (train/stages.py) as the plot shades them.
_STAGE_SPANS = (("pretrain", "text pretraining", "#f2f2f2"), ("projector", "stage 1: projector", "#fff3d6"),
                ("full", "stage 2: everything", "#e3f0e3"))
_MODELS = (("text", "text only (pretraining, then the baseline)", "tab:gray"),
           ("image", "with the image (LLaVA)", "tab:blue"))


def plot_caption_losses(records: list[dict], path: str | Path, title: str = "") -> Path:
    """A vision run's caption losses by step (train/multimodal.py): the text-only model (its
    pretraining, then the baseline) beside the image model (stage 1, stage 2), training loss
    smoothed and validation loss, on a log scale, the phases shaded and named."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for stage, label, colour in _STAGE_SPANS:
        steps = [r["step"] for r in records if r.get("stage") == stage and r.get("kind") == "train"]
        if steps:
            ax.axvspan(min(steps) - 1, max(steps), color=colour, zorder=0)
            ax.text((min(steps) - 1 + max(steps)) / 2, 0.98, label, transform=ax.get_xaxis_transform(),
                    ha="center", va="top", fontsize=8)
    for model, label, colour in _MODELS:
        train = {r["step"]: r["loss"] for r in records if r.get("kind") == "train" and r.get("model") == model}
        val = {r["step"]: r["val_loss"] for r in records if r.get("kind") == "val" and r.get("model") == model}
        if train:
            steps, losses = np.array(sorted(train)), np.array([train[s] for s in sorted(train)])
            ax.plot(steps, _smooth(losses, max(1, len(losses) // 30)), color=colour, alpha=0.6, linewidth=1,
                    label=f"{label}: train (smoothed)")
        if val:
            ax.plot(sorted(val), [val[s] for s in sorted(val)], "o-", color=colour, markersize=3,
                    label=f"{label}: validation")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("caption cross-entropy (nats / byte)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
