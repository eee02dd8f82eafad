"""Baselines: a suite report recorded under ``benchmarks/baselines/<key>.json``, one file per
model and precision, keyed by the device it was measured on.

    python -m benchmarks.baseline --report results/suite/imdb.json      # make baseline

The key holds what a latency depends on. On a Jetson: model, module, JetPack, TensorRT version,
power mode, precision. Elsewhere: model, CPU name, the host fingerprint of
``benchmarks.host_fingerprint`` (two machines with the same CPU name differ), TensorRT version,
precision. A figure is only ever compared with a baseline of the same key (``find_baseline``):
a JetPack upgrade, another power mode or another host never compares against the old one; it
has no baseline until ``make baseline`` records one there.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List

import click

from common.errors import ToolkitError, exit_on_toolkit_error

BASELINES = Path(__file__).resolve().parent / "baselines"
HOW_TO_RECORD = "make bench-all MODEL={model} && make baseline MODEL={model}"


def is_jetson(report: Dict[str, Any]) -> bool:
    device = (report.get("state") or {}).get("device") or {}
    return bool(device.get("is_jetson") or device.get("module"))


def key_fields(report: Dict[str, Any], precision: str) -> Dict[str, str]:
    """A Jetson: module, JetPack, TensorRT, power mode. Elsewhere: CPU name, host fingerprint
    (``benchmarks.host_fingerprint``, recorded by the suite), TensorRT."""
    state = report.get("state") or {}
    device = state.get("device") or {}
    env = state.get("environment") or {}
    tensorrt = device.get("tensorrt") or env.get("tensorrt") or "none"
    if is_jetson(report):
        power = device.get("power_mode") or {}
        return {"model": report["model"], "device": device.get("module") or "jetson",
                "jetpack": device.get("jetpack") or "none", "tensorrt": tensorrt,
                "power_mode": power.get("name") or "none", "precision": precision}
    host = (state.get("host") or {}).get("fingerprint")
    if not host:
        raise ToolkitError(f"the {report['model']} suite report has no host fingerprint "
                           "(state.host: measured before baselines were keyed by machine): "
                           f"rerun {HOW_TO_RECORD.format(model=report['model'])}")
    return {"model": report["model"],
            "device": device.get("cpu_model") or env.get("cpu") or "unknown",
            "host": host, "tensorrt": tensorrt, "precision": precision}


def key_of(fields: Dict[str, str]) -> str:
    """``imdb--amd-epyc--host-6dae9099c7ab--trt-none--fp32`` (CPU host) or
    ``imdb--jetson-agx-orin--jp-6.1--trt-10.3--power-maxn--fp16``: a file name on any system."""
    if "host" in fields:
        parts = [fields["model"], fields["device"], f"host-{fields['host']}",
                 f"trt-{fields['tensorrt']}", fields["precision"]]
    else:
        parts = [fields["model"], fields["device"], f"jp-{fields['jetpack']}",
                 f"trt-{fields['tensorrt']}", f"power-{fields['power_mode']}",
                 fields["precision"]]
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
                  directory: Path = BASELINES) -> Dict[str, Any] | None:
    """The baseline of exactly this key (this machine, this precision), None when there is
    none: a baseline of another host or device is never returned."""
    from common.fileio import read_json

    path = Path(directory) / f"{key_of(key_fields(report, precision))}.json"
    return read_json(path, "baseline") if path.is_file() else None


def machine_key(report: Dict[str, Any]) -> str:
    """The key without its precision: which machine (and software) the report is of."""
    return key_of(key_fields(report, "any")).rsplit("--", 1)[0]


def other_baselines(report: Dict[str, Any], directory: Path = BASELINES) -> List[str]:
    """Keys of this model's baselines recorded on other hosts / devices (never compared)."""
    mine = machine_key(report)
    model = mine.split("--", 1)[0]
    return [k for k in existing_keys(directory)
            if k.split("--", 1)[0] == model and k.rsplit("--", 1)[0] != mine]


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
