"""What a run leaves for people: metrics.json (one section per stage) and plots."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import nbformat

matplotlib.use("Agg")  # files only: no display in batch runs
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from pipeline.errors import PipelineError
from pipeline.fsutil import atomic_file, write_json, write_text


def write_metrics(run_dir, stage: str, metrics: dict) -> Path:
    """Stores `metrics` under key `stage` in `<run_dir>/metrics.json`, keeping other stages."""
    path = Path(run_dir) / "metrics.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[stage] = metrics
    return write_json(path, data)


def write_benchmark(out_dir, name: str, result: dict, table: str) -> None:
    """Writes `<out_dir>/<name>.json` and `<name>.md` and prints the table."""
    write_json(Path(out_dir) / f"{name}.json", result)
    write_text(Path(out_dir) / f"{name}.md", table)
    print(table)


def read_metrics(run_dir) -> dict:
    """The run folder's metrics.json ({} when there is none); one-line PipelineError when it
    is damaged (e.g. empty after a power loss), naming the file and the way out."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise PipelineError(f"{path} is damaged (not a JSON mapping): restore it, or start the "
                            f"run afresh (pipeline run --fresh, or a new --run-dir)")
    return data


def notebook_metrics(notebook) -> dict:
    """Returns the metrics an executed stage notebook recorded ({stage: metrics}).

    Each notebook's last cell displays its metrics as an `application/json` output, so a batch
    job can read them from the notebook papermill wrote, without the run folder. Paths inside
    are those the notebook saw (under `<name>.partial/` when `pipeline run` executed it).
    """
    found: dict = {}
    for cell in nbformat.read(str(notebook), as_version=4).cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {}).get("application/json")
            if isinstance(data, dict):
                found.update(data)
    return found


def plot_loss_curve(history: dict, path) -> Path:
    """Draws training loss per step and validation loss per epoch into a PNG at `path`."""
    fig, ax = plt.subplots(figsize=(7, 4))
    if history.get("steps"):
        ax.plot(history["steps"], history["losses"], label="training loss (running mean per epoch)")
    if history.get("epoch_steps"):
        ax.plot(history["epoch_steps"], history["val_losses"], "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_perplexities(values: dict, params: dict, path) -> Path:
    """Draws one bar per model (teacher, student, baseline): perplexity and parameters."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    names = list(values)
    bars = ax.bar(names, [values[n] for n in names], color=["#777", "#2a7", "#c84"])
    for bar, name in zip(bars, names):
        ax.annotate(f"{values[name]:.1f}\n{params[name] / 1e6:.2f}M params",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("validation perplexity")
    ax.set_ylim(0, max(values.values()) * 1.3)
    return _save(fig, path)


def plot_lines(x_labels: list, lines: dict, x_name: str, y_name: str, title: str, path) -> Path:
    """Draws one line per entry of `lines` ({label: [(x index, y), ...]}) over `x_labels`."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in lines.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xticks(range(len(x_labels)), [str(x) for x in x_labels])
    ax.set_xlabel(x_name)
    ax.set_ylabel(y_name)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if any(lines):
        ax.legend()
    return _save(fig, path)


def _save(fig, path) -> Path:
    fig.tight_layout()
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)
