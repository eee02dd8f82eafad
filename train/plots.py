"""Training and evaluation plots: loss/accuracy curves from ``history.json``, a confusion
matrix and the true-versus-predicted class distribution.

matplotlib is imported inside the functions, and figures are drawn on the Agg canvas without
pyplot (no global state, no display needed). Every PNG is written atomically.

    python -m train.plots --history checkpoints/imdb/history.json --output-dir checkpoints/imdb
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import click

from common.errors import ToolkitError, exit_on_toolkit_error
from common.fileio import atomic_path, read_json

LOSS_CURVE = "loss_curve.png"
ACCURACY_CURVE = "accuracy_curve.png"


def _new_figure(width: float = 6.4, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def _epochs(history: Dict) -> List[Dict]:
    epochs = history.get("epochs") if isinstance(history, dict) else None
    if not isinstance(epochs, list) or not epochs:
        raise ToolkitError('history has no "epochs" list: expected {"kind", "epochs": [...]}')
    for i, row in enumerate(epochs):
        if not isinstance(row, dict) or "epoch" not in row or "train_loss" not in row:
            raise ToolkitError(f'history epochs[{i}] lacks "epoch"/"train_loss": {row!r}')
    return epochs


def _series(epochs: List[Dict], key: str):
    """(x, y) of the epochs that have ``key``."""
    rows = [row for row in epochs if row.get(key) is not None]
    return [row["epoch"] for row in rows], [float(row[key]) for row in rows]


def _integer_epochs(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_history(history: Dict, out_dir: str | Path) -> List[Path]:
    """Loss curve PNG, plus an accuracy curve PNG when the history has ``val_accuracy``."""
    epochs = _epochs(history)
    out_dir = Path(out_dir)
    kind = history.get("kind", "model")
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        x, y = _series(epochs, key)
        if x:
            ax.plot(x, y, marker="o", label=label)
    ax.set(xlabel="epoch", ylabel="cross-entropy loss", title=f"{kind}: loss")
    _integer_epochs(ax)
    ax.grid(alpha=0.3)
    ax.legend()
    written = [_save(fig, out_dir / LOSS_CURVE)]
    x, y = _series(epochs, "val_accuracy")
    if x:
        fig = _new_figure()
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(x, y, marker="o", color="tab:green")
        ax.set(xlabel="epoch", ylabel="validation accuracy", title=f"{kind}: accuracy",
               ylim=(0.0, 1.0))
        _integer_epochs(ax)
        ax.grid(alpha=0.3)
        written.append(_save(fig, out_dir / ACCURACY_CURVE))
    return written


def plot_confusion_matrix(cm, labels: Sequence[str], path: str | Path) -> Path:
    """``cm[true][pred]`` counts as a heat map with the count in every cell."""
    import numpy as np

    counts = np.asarray(cm, dtype=np.int64)  # (classes, classes), rows = true label
    n = len(labels)
    if counts.shape != (n, n):
        raise ToolkitError(f"confusion matrix shape {counts.shape}: expected ({n}, {n})")
    fig = _new_figure(4.8, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ticks = list(range(n))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=labels, yticklabels=labels,
           xlabel="predicted", ylabel="true", title="confusion matrix")
    threshold = counts.max() / 2 if counts.size else 0
    for i in range(n):
        for j in range(n):
            color = "white" if counts[i, j] > threshold else "black"
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=color)
    return _save(fig, path)


def plot_class_distribution(
    true_counts: Sequence[int], pred_counts: Sequence[int], labels: Sequence[str],
    path: str | Path,
) -> Path:
    """Side-by-side bars: how many examples of each class there are and how many were predicted."""
    n = len(labels)
    if len(true_counts) != n or len(pred_counts) != n:
        raise ToolkitError(
            f"class counts of length {len(true_counts)}/{len(pred_counts)}: expected {n} "
            f"(one per label)"
        )
    fig = _new_figure(5.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.4
    positions = list(range(n))
    ax.bar([p - width / 2 for p in positions], list(true_counts), width, label="true")
    ax.bar([p + width / 2 for p in positions], list(pred_counts), width, label="predicted")
    ax.set(xticks=positions, xticklabels=labels, ylabel="examples", title="class distribution")
    ax.legend()
    return _save(fig, path)


@click.command()
@click.option("--history", "history_path", required=True, type=click.Path(dir_okay=False),
              help="history.json written by the trainer.")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None,
              help="Where to write the PNGs (default: beside history.json).")
@exit_on_toolkit_error
def main(history_path: str, output_dir: str | None) -> None:
    """Redraw the loss (and accuracy) curves of a training run."""
    history = read_json(history_path, "training history")
    out_dir = Path(output_dir) if output_dir else Path(history_path).parent
    for path in plot_history(history, out_dir):
        click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
