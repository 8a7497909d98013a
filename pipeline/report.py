"""What a run leaves for people: metrics.json (one section per stage) and plots."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.fsutil import atomic_file, write_json


def write_metrics(run_dir, stage: str, metrics: dict) -> Path:
    """Stores `metrics` under key `stage` in `<run_dir>/metrics.json`, keeping other stages."""
    path = Path(run_dir) / "metrics.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[stage] = metrics
    return write_json(path, data)


def read_metrics(run_dir) -> dict:
    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def plot_loss_curve(history: dict, path) -> Path:
    """Draws training loss per step and validation loss per epoch into a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if history.get("steps"):
        ax.plot(history["steps"], history["losses"], label="training loss (running mean per epoch)")
    if history.get("epoch_steps"):
        ax.plot(history["epoch_steps"], history["val_losses"], "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)
