"""PNG plots of a suite report: latency against batch and sequence per backend, decode time per
token against position, accuracy against latency (and against energy on a Jetson).
matplotlib is imported here only (Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from common.fileio import atomic_path


def _ran(report: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [r for r in report["results"] if r["status"] == "ran" and r.get("latency")]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def latency_plot(report: Dict[str, Any], path: Path) -> Path | None:
    """Classifier: p50 ms against seq (one line per backend and batch). Decoder: prefill p50
    and decode ms per token against prompt length."""
    rows = _ran(report)
    if not rows:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    key_a, key_b = (("p50_ms", "p99_ms") if report["kind"] == "classifier"
                    else ("prefill_p50_ms", "decode_p50_ms"))
    for row in rows:
        for batch in sorted({p["batch"] for p in row["latency"]}):
            points = sorted((p for p in row["latency"] if p["batch"] == batch),
                            key=lambda p: p["seq"])
            label = f"{row['backend']} b{batch}"
            seqs = [p["seq"] for p in points]
            axes[0].plot(seqs, [p[key_a] for p in points], marker="o", label=label)
            axes[1].plot(seqs, [p[key_b] for p in points], marker="o", label=label)
    xlabel = "sequence length" if report["kind"] == "classifier" else "prompt length"
    for ax, key in zip(axes, (key_a, key_b)):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(key.replace("_", " "))
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{report['model']}: latency by batch and length")
    return _finish(plt, fig, path)


def _finish(plt, fig, path: Path) -> Path:
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def per_token_plot(report: Dict[str, Any], path: Path) -> Path | None:
    rows = [r for r in _ran(report) if (r.get("per_token") or {}).get("curve")]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for row in rows:
        curve = row["per_token"]["curve"]
        ax.plot([c["position"] for c in curve], [c["ms"] for c in curve], marker=".",
                label=row["backend"])
    ax.set_xlabel("cache position (tokens already in the KV cache)")
    ax.set_ylabel("decode ms per token (median)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{report['model']}: decode time per token against position, batch 1")
    return _finish(plt, fig, path)


def _accuracy_value(row: Dict[str, Any]):
    acc = row.get("accuracy") or {}
    if acc.get("metric") == "accuracy":
        return 100 * acc["accuracy"], "accuracy %"
    if acc.get("metric") == "loss":
        return acc["loss"], "loss (lower is better)"
    return None, None


def accuracy_plot(report: Dict[str, Any], path: Path, against: str = "latency") -> Path | None:
    """Accuracy against p50 latency (classifier, smallest batch, longest seq) or decode ms per
    token (decoder); ``against="energy"``: against mJ per inference / token (Jetson)."""
    points = []
    for row in _ran(report):
        y, ylabel = _accuracy_value(row)
        x = _speed(row, report) if against == "latency" else _energy(row)
        if y is not None and x is not None:
            points.append((x, y, row["backend"]))
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for x, y, name in points:
        ax.scatter([x], [y])
        ax.annotate(name, (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    decoder = report["kind"] == "decoder"
    ax.set_xlabel(("mJ per token" if decoder else "mJ per inference") if against == "energy"
                  else ("decode ms per token, batch 1" if decoder else "p50 ms"))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_title(f"{report['model']}: accuracy against {against}")
    return _finish(plt, fig, path)


def _speed(row: Dict[str, Any], report: Dict[str, Any]):
    if report["kind"] == "decoder":
        return row["latency"][0].get("decode_p50_ms") if row["latency"] else None
    s = report["settings"]
    for p in row["latency"]:
        if p["batch"] == min(s["batch"]) and p["seq"] == max(s["seq"]):
            return p["p50_ms"]
    return row["latency"][0]["p50_ms"]


def _energy(row: Dict[str, Any]):
    energy = row.get("energy") or {}
    return energy.get("energy_per_inference_mj", energy.get("energy_per_token_mj"))


def write_plots(report: Dict[str, Any], out_dir: Path) -> List[Path]:
    out_dir = Path(out_dir)
    name = report["model"]
    made = [latency_plot(report, out_dir / f"{name}.latency.png"),
            accuracy_plot(report, out_dir / f"{name}.accuracy_latency.png")]
    if report["kind"] == "decoder":
        made.append(per_token_plot(report, out_dir / f"{name}.per_token.png"))
    if any(_energy(r) is not None for r in _ran(report)):
        made.append(accuracy_plot(report, out_dir / f"{name}.accuracy_energy.png", "energy"))
    return [p for p in made if p is not None]
