"""Baselines: a suite report recorded under ``benchmarks/baselines/<key>.json``, one file per
model and precision, keyed by the device it was measured on.

    python -m benchmarks.baseline --report results/suite/imdb.json      # make baseline

The key holds what a latency depends on: model, device (the Jetson module, else the CPU model),
JetPack, TensorRT version, power mode, precision. A figure is only ever compared with a
baseline of the same key (``find_baseline``); when none exists the message lists the keys that
do, so a JetPack upgrade or another power mode never silently compares against the old one.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List

import click

from common.errors import ToolkitError, exit_on_toolkit_error

BASELINES = Path(__file__).resolve().parent / "baselines"
KEY_FIELDS = ("model", "device", "jetpack", "tensorrt", "power_mode", "precision")


def key_fields(report: Dict[str, Any], precision: str) -> Dict[str, str]:
    state = report.get("state") or {}
    device = state.get("device") or {}
    env = state.get("environment") or {}
    power = device.get("power_mode") or {}
    return {"model": report["model"],
            "device": device.get("module") or device.get("cpu_model") or env.get("cpu")
            or "unknown",
            "jetpack": device.get("jetpack") or "none",
            "tensorrt": device.get("tensorrt") or env.get("tensorrt") or "none",
            "power_mode": power.get("name") or "none",
            "precision": precision}


def key_of(fields: Dict[str, str]) -> str:
    """``imdb--amd-epyc--jp-none--trt-none--power-none--fp32``: a file name on any system."""
    parts = [fields["model"], fields["device"], f"jp-{fields['jetpack']}",
             f"trt-{fields['tensorrt']}", f"power-{fields['power_mode']}", fields["precision"]]
    return "--".join(re.sub(r"[^a-z0-9.]+", "-", str(p).lower()).strip("-") for p in parts)


def rows_by_precision(report: Dict[str, Any]) -> Dict[str, List[Dict[str, Any]]]:
    """The rows that ran, by precision (fp32, int8-qdq, fp16, int8, best)."""
    out: Dict[str, List[Dict[str, Any]]] = {}
    for row in report.get("results", []):
        if row.get("status") == "ran":
            out.setdefault(row["precision"], []).append(row)
    return out


def record(report: Dict[str, Any], directory: Path = BASELINES) -> List[Path]:
    """Write one baseline per precision of ``report``'s rows that ran (atomically)."""
    from common.fileio import atomic_write_json

    groups = rows_by_precision(report)
    if not groups:
        raise ToolkitError("the report has no row that ran: nothing to record")
    written = []
    for precision, rows in sorted(groups.items()):
        fields = key_fields(report, precision)
        baseline = {**{k: v for k, v in report.items() if k != "results"},
                    "baseline_key": key_of(fields), "baseline_fields": fields, "results": rows}
        written.append(atomic_write_json(Path(directory) / f"{key_of(fields)}.json", baseline))
    return written


def existing_keys(directory: Path = BASELINES) -> List[str]:
    return sorted(p.stem for p in Path(directory).glob("*.json"))


def find_baseline(report: Dict[str, Any], precision: str,
                  directory: Path = BASELINES) -> Dict[str, Any]:
    """The baseline of exactly this key; ToolkitError naming the keys that exist otherwise."""
    from common.fileio import read_json

    key = key_of(key_fields(report, precision))
    path = Path(directory) / f"{key}.json"
    if not path.is_file():
        keys = existing_keys(directory)
        raise ToolkitError(f"no baseline {key!r} in {directory}: "
                           + (f"the keys that exist are {', '.join(keys)}" if keys else
                              "there is none yet")
                           + " (record one on this device: make baseline)")
    return read_json(path, "baseline")


@click.command()
@click.option("--report", required=True, type=click.Path(dir_okay=False),
              help="suite report, e.g. results/suite/imdb.json")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=BASELINES, show_default=True)
@exit_on_toolkit_error
def main(report, directory) -> None:
    """Record the rows of a suite report as this device's baselines, one per precision."""
    from common.fileio import read_json

    for path in record(read_json(report, "suite report"), directory):
        click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
