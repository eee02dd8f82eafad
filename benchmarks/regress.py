"""The regression check: a suite report against the baseline of its key, figure by figure.

    python -m benchmarks.regress --report results/suite/imdb.json     # make regress

Fails (exit 1) when a figure is worse than its baseline beyond its tolerance, printing which
figure moved and by how much. Checked: p50 and p99 latency and tokens (sequences) per second,
default 10%; energy per inference / token, 10%; accuracy by the calibration gate's rule (the
classifier may lose 0.5 accuracy points, the decoder's loss may grow 0.5%). Memory, size and
build time are shown by ``benchmarks.compare`` but not failed on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

import click

from benchmarks.compare import Figure, flatten, worse_percent
from common.errors import ToolkitError, exit_on_toolkit_error


@dataclass(frozen=True)
class Tolerances:
    latency_percent: float = 10.0  # p50 / p99 latency and per-token ms
    throughput_percent: float = 10.0  # tokens/s, sequences/s
    energy_percent: float = 10.0
    accuracy_points: float = 0.5  # classifier: accuracy points (calibration gate --max-drop)
    loss_percent: float = 0.5  # decoder: percent of the baseline loss (the gate's unit)


@dataclass
class Moved:
    figure: str
    old: float
    new: float
    worse: float  # in the unit of ``limit``
    limit: float
    unit: str  # "%" or "points"

    def __str__(self) -> str:
        return (f"{self.figure}: {self.old:.4g} -> {self.new:.4g} (worse by {self.worse:+.2f}"
                f"{'%' if self.unit == '%' else ' ' + self.unit}, tolerance {self.limit:g}"
                f"{'%' if self.unit == '%' else ' ' + self.unit})")


def _judge(name: str, old: Figure, new: Figure, tol: Tolerances):
    """(worse, limit, unit) for a checked figure, None for a figure that is not checked."""
    if old.kind == "latency":
        return worse_percent(old, new), tol.latency_percent, "%"
    if old.kind == "throughput":
        return worse_percent(old, new), tol.throughput_percent, "%"
    if old.kind == "energy" and name.endswith(("mJ/inference", "mJ/token")):
        return worse_percent(old, new), tol.energy_percent, "%"
    if old.kind == "accuracy" and name.endswith("| accuracy"):
        return 100.0 * (old.value - new.value), tol.accuracy_points, "points"
    if old.kind == "accuracy" and name.endswith("| loss"):
        return worse_percent(old, new), tol.loss_percent, "%"
    return None


def check(baseline: Dict[str, Any], current: Dict[str, Any],
          tol: Tolerances = Tolerances()) -> Dict[str, Any]:
    """``{"regressions": [Moved], "checked": [Moved], "missing": [names]}``: every checked
    figure with its change; the ones beyond tolerance; baseline figures the run lacks."""
    old, new = flatten(baseline), flatten(current)
    checked, regressions = [], []
    for name, before in old.items():
        if name not in new:
            continue
        judged = _judge(name, before, new[name], tol)
        if judged is None:
            continue
        moved = Moved(name, before.value, new[name].value, *judged)
        checked.append(moved)
        if moved.worse > moved.limit:
            regressions.append(moved)
    regressions.sort(key=lambda m: -m.worse / m.limit if m.limit else 0.0)
    missing = sorted(n for n in old if n not in new and _judge(n, old[n], old[n], tol))
    return {"regressions": regressions, "checked": checked, "missing": missing}


def check_report(report: Dict[str, Any], directory: Path | None = None,
                 tol: Tolerances = Tolerances()) -> Dict[str, Dict[str, Any]]:
    """Each precision of the report against its own baseline (ToolkitError when one of them
    has none: the message lists the keys that exist)."""
    from benchmarks import baseline as bl

    results = {}
    for precision, rows in sorted(bl.rows_by_precision(report).items()):
        base = bl.find_baseline(report, precision, directory or bl.BASELINES)
        results[precision] = check(base, {**report, "results": rows}, tol)
    if not results:
        raise ToolkitError("the report has no row that ran: nothing to check")
    return results


def summary_lines(results: Dict[str, Dict[str, Any]]) -> List[str]:
    lines = []
    for precision, result in results.items():
        status = "REGRESSED" if result["regressions"] else "ok"
        lines.append(f"{precision}: {status} ({len(result['checked'])} figures checked)")
        lines += [f"  worse: {m}" for m in result["regressions"]]
        lines += [f"  missing from this run: {n}" for n in result["missing"]]
    return lines


@click.command()
@click.option("--report", required=True, type=click.Path(dir_okay=False),
              help="suite report of this run, e.g. results/suite/imdb.json")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="baselines folder [default: benchmarks/baselines]")
@click.option("--latency-tolerance", default=10.0, show_default=True, help="percent")
@click.option("--throughput-tolerance", default=10.0, show_default=True, help="percent")
@click.option("--energy-tolerance", default=10.0, show_default=True, help="percent")
@click.option("--accuracy-points", default=0.5, show_default=True,
              help="classifier accuracy points")
@click.option("--loss-percent", default=0.5, show_default=True, help="decoder loss, percent")
@exit_on_toolkit_error
def main(report, directory, latency_tolerance, throughput_tolerance, energy_tolerance,
         accuracy_points, loss_percent) -> None:
    """Fail when a figure of REPORT is worse than this device's baseline beyond tolerance."""
    from common.fileio import read_json

    tol = Tolerances(latency_tolerance, throughput_tolerance, energy_tolerance, accuracy_points,
                     loss_percent)
    results = check_report(read_json(report, "suite report"), directory, tol)
    for line in summary_lines(results):
        click.echo(line)
    if any(r["regressions"] for r in results.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
