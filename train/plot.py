"""The loss curve of a run as a PNG, drawn with matplotlib's Agg backend (no display needed)."""

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
