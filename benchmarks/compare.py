"""The change of every figure between two suite reports, worse ones first.

    python -m benchmarks.compare results/old/imdb.json results/suite/imdb.json

A figure is named ``<backend> | <what> [at a point]`` (``ort-cpu-fp32 | p99 ms b1 s256``) and
knows whether lower or higher is better, so "worse" is signed the same way for latencies,
rates, energy and accuracy. ``flatten`` is shared with ``benchmarks.regress``.
"""
from __future__ import annotations

from typing import Any, Dict, NamedTuple

import click

from common.errors import ToolkitError, exit_on_toolkit_error

LOWER, HIGHER = "lower", "higher"


class Figure(NamedTuple):
    value: float
    better: str  # LOWER | HIGHER
    kind: str  # latency | throughput | energy | accuracy | memory | size | build | overhead


def _add(out: Dict[str, Figure], name: str, value, better: str, kind: str) -> None:
    if isinstance(value, (int, float)) and value == value:  # skip None and NaN
        out[name] = Figure(float(value), better, kind)


def _latency_figures(out: Dict[str, Figure], prefix: str, point: Dict[str, Any]) -> None:
    where = f"b{point['batch']} s{point['seq']}"
    if "p50_ms" in point:  # classifier
        _add(out, f"{prefix}p50 ms {where}", point["p50_ms"], LOWER, "latency")
        _add(out, f"{prefix}p99 ms {where}", point["p99_ms"], LOWER, "latency")
        _add(out, f"{prefix}sequences/s {where}", point.get("sequences_per_s"), HIGHER,
             "throughput")
        return
    for stage in ("prefill", "decode"):
        _add(out, f"{prefix}{stage} p50 ms {where}", point.get(f"{stage}_p50_ms"), LOWER,
             "latency")
        _add(out, f"{prefix}{stage} p99 ms {where}", point.get(f"{stage}_p99_ms"), LOWER,
             "latency")
        _add(out, f"{prefix}{stage} tokens/s {where}", point.get(f"{stage}_tokens_per_s"),
             HIGHER, "throughput")


def flatten(report: Dict[str, Any]) -> Dict[str, Figure]:
    """Every figure of the rows that ran."""
    out: Dict[str, Figure] = {}
    for row in report.get("results", []):
        if row.get("status") != "ran":
            continue
        prefix = f"{row['backend']} | "
        for point in row.get("latency") or []:
            _latency_figures(out, prefix, point)
        for position, ms in ((row.get("per_token") or {}).get("at") or {}).items():
            _add(out, f"{prefix}decode ms/token @{position}", ms, LOWER, "latency")
        acc = row.get("accuracy") or {}
        _add(out, f"{prefix}accuracy", acc.get("accuracy"), HIGHER, "accuracy")
        _add(out, f"{prefix}loss", acc.get("loss"), LOWER, "accuracy")
        _add(out, f"{prefix}bits/byte", acc.get("bits_per_byte"), LOWER, "accuracy")
        energy = row.get("energy") or {}
        for unit in ("inference", "token"):
            _add(out, f"{prefix}mJ/{unit}", energy.get(f"energy_per_{unit}_mj"), LOWER, "energy")
        _add(out, f"{prefix}mean power mW", energy.get("mean_power_mw"), LOWER, "energy")
        _add(out, f"{prefix}peak RSS MiB", (row.get("memory") or {}).get("peak_rss_mib"), LOWER,
             "memory")
        _add(out, f"{prefix}size bytes", row.get("size_bytes"), LOWER, "size")
        _add(out, f"{prefix}build s", row.get("build_seconds"), LOWER, "build")
        _add(out, f"{prefix}runtime overhead vs trtexec ms",
             (row.get("trtexec") or {}).get("runtime_overhead_ms"), LOWER, "overhead")
    return out


def figure_rounds(report: Dict[str, Any]) -> Dict[str, list]:
    """The per-round values of every timed figure (``row["rounds"]``, written by the suite's
    interleaved rounds), named as ``flatten`` names them."""
    out: Dict[str, list] = {}
    for row in report.get("results", []):
        if row.get("status") == "ran":
            for name, values in (row.get("rounds") or {}).items():
                out[f"{row['backend']} | {name}"] = list(values)
    return out


def timed_figures(row: Dict[str, Any]) -> Dict[str, float]:
    """A row's latency, throughput and energy figures by name without the backend prefix."""
    prefix = f"{row['backend']} | "
    return {name[len(prefix):]: fig.value
            for name, fig in flatten({"results": [{**row, "status": "ran"}]}).items()
            if fig.kind in ("latency", "throughput", "energy")}


def worse_percent(old: Figure, new: Figure) -> float:
    """How much worse ``new`` is, in percent of ``old`` (negative: better)."""
    if old.value == 0:
        if new.value == 0:
            return 0.0
        worse = (new.value > 0) == (old.better == LOWER)
        return float("inf") if worse else float("-inf")
    change = 100.0 * (new.value - old.value) / abs(old.value)
    return change if old.better == LOWER else -change


def compare(old: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, Any]:
    if old.get("model") != new.get("model"):
        raise ToolkitError(f"the reports are of different models ({old.get('model')!r} and "
                           f"{new.get('model')!r})")
    a, b = flatten(old), flatten(new)
    rows = [{"figure": name, "old": a[name].value, "new": b[name].value,
             "worse_percent": worse_percent(a[name], b[name]), "better": a[name].better,
             "kind": a[name].kind} for name in a if name in b]
    rows.sort(key=lambda r: -r["worse_percent"])
    return {"changes": rows, "only_old": sorted(set(a) - set(b)),
            "only_new": sorted(set(b) - set(a))}


def format_changes(result: Dict[str, Any]) -> str:
    lines = []
    width = max([len(r["figure"]) for r in result["changes"]] + [6])
    lines.append(f"{'figure':<{width}}  {'old':>12}  {'new':>12}  {'worse by':>9}")
    for r in result["changes"]:
        lines.append(f"{r['figure']:<{width}}  {r['old']:>12.4g}  {r['new']:>12.4g}  "
                     f"{r['worse_percent']:>+8.1f}%")
    if result["only_old"]:
        lines.append("only in the old report: " + ", ".join(result["only_old"]))
    if result["only_new"]:
        lines.append("only in the new report: " + ", ".join(result["only_new"]))
    return "\n".join(lines)


@click.command()
@click.argument("old", type=click.Path(dir_okay=False))
@click.argument("new", type=click.Path(dir_okay=False))
@exit_on_toolkit_error
def main(old, new) -> None:
    """Print the change of every figure from OLD to NEW (suite JSON reports), worse first."""
    from common.fileio import read_json

    click.echo(format_changes(compare(read_json(old, "suite report"),
                                      read_json(new, "suite report"))))


if __name__ == "__main__":
    main()
