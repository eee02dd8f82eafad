"""The suite's Markdown report: one row per backend with a status column (ran / failed and why
/ not available here), accuracy next to speed, then the device and the settings."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from benchmarks.accuracy import headline


def _fmt(value: Optional[float], spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{format(value, spec)}{suffix}"


def _status(row: Dict[str, Any]) -> str:
    if row["status"] == "ran":
        return "ran"
    reason = (row.get("reason") or "").replace("|", "/").replace("\n", " ")
    return f"{row['status']}: {reason}" if reason else row["status"]


def _first(row: Dict[str, Any], key: str, **where) -> Optional[float]:
    for point in row.get("latency") or []:
        if all(point.get(k) == v for k, v in where.items()):
            return point.get(key)
    points = row.get("latency") or []
    return points[0].get(key) if points and not where else None


def _mb(n: Optional[int]) -> Optional[float]:
    return None if n is None else n / 1e6


def classifier_columns(row: Dict[str, Any], report: Dict[str, Any]) -> List[str]:
    settings = report["settings"]
    b_small, b_big = min(settings["batch"]), max(settings["batch"])
    s_long = max(settings["seq"])
    small = dict(batch=b_small, seq=s_long)
    big = dict(batch=b_big, seq=s_long)
    energy = (row.get("energy") or {}).get("energy_per_inference_mj")
    return [_fmt(_first(row, "p50_ms", **small), ".3f"),
            _fmt(_first(row, "p99_ms", **small), ".3f"),
            _fmt(_first(row, "sequences_per_s", **big), ".0f"), _fmt(energy, ".2f")]


def decoder_columns(row: Dict[str, Any], report: Dict[str, Any]) -> List[str]:
    at = (row.get("per_token") or {}).get("at") or {}
    positions = [str(p) for p in report["settings"]["positions"]]
    energy = (row.get("energy") or {}).get("energy_per_token_mj")
    return [_fmt(_first(row, "prefill_tokens_per_s", batch=1), ".0f"),
            _fmt(_first(row, "decode_tokens_per_s", batch=1), ".0f"),
            " / ".join(_fmt(at.get(p), ".3f") for p in positions), _fmt(energy, ".2f")]


def headers(report: Dict[str, Any]) -> List[str]:
    common = ["backend", "status", "accuracy" if report["kind"] == "classifier" else "loss"]
    tail = ["peak RSS MiB", "size MB", "build s"]
    settings = report["settings"]
    if report["kind"] == "classifier":
        s = max(settings["seq"])
        b = min(settings["batch"])
        middle = [f"p50 ms b{b}/s{s}", f"p99 ms b{b}/s{s}",
                  f"seq/s b{max(settings['batch'])}/s{s}", "mJ/inference"]
    else:
        pos = "/".join(str(p) for p in settings["positions"])
        middle = ["prefill tok/s b1", "decode tok/s b1", f"ms/token @{pos}", "mJ/token"]
    return common + middle + tail


def markdown_table(report: Dict[str, Any]) -> str:
    lines = [headers(report)]
    for row in report["results"]:
        figures = (classifier_columns if report["kind"] == "classifier" else decoder_columns)(
            row, report)
        memory = row.get("memory") or {}
        lines.append([row["backend"], _status(row), headline(row.get("accuracy"))] + figures + [
            _fmt(memory.get("peak_rss_mib"), ".0f"), _fmt(_mb(row.get("size_bytes")), ".2f"),
            _fmt(row.get("build_seconds"), ".1f")])
    out = ["| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(lines[0])]
    out += ["| " + " | ".join(cells) + " |" for cells in lines[1:]]
    return "\n".join(out)


def device_lines(report: Dict[str, Any]) -> List[str]:
    state = report.get("state") or {}
    device = state.get("device") or {}
    env = state.get("environment") or {}
    power = device.get("power_mode") or {}
    return [
        f"- device: {device.get('module') or device.get('cpu_model') or env.get('cpu')}"
        f" ({env.get('cpu_count')} CPUs visible), JetPack {device.get('jetpack') or '-'}, "
        f"power mode {power.get('name') or '-'}, clocks locked "
        f"{'-' if device.get('clocks_locked') is None else device.get('clocks_locked')}",
        f"- software: Python {env.get('python')}, numpy {env.get('numpy')}, onnxruntime "
        f"{env.get('onnxruntime') or '-'}, TensorRT {env.get('tensorrt') or '-'}",
    ]


def trtexec_lines(report: Dict[str, Any]) -> List[str]:
    lines = []
    for row in report["results"]:
        t = row.get("trtexec")
        if t:
            lines.append(f"- {row['backend']}: runtime p50 {t['runtime_p50_ms']:.3f} ms vs "
                         f"trtexec GPU compute median {t['trtexec_gpu_median_ms']:.3f} ms: "
                         f"+{t['runtime_overhead_ms']:.3f} ms "
                         f"({t['runtime_overhead_percent']:.1f}%)")
    if not lines:
        lines.append("- trtexec: " + ("not run (no TensorRT row ran)" if report.get("trtexec")
                                      else "not available here"))
    return lines


def markdown_report(report: Dict[str, Any]) -> str:
    evaluation = report.get("evaluation")
    unit = "reviews" if report["kind"] == "classifier" else "windows"
    eval_line = (f"- accuracy: {evaluation['samples']} {unit} of the {evaluation['split']} split"
                 f" ({evaluation['subset']}) of {evaluation['data']}"
                 if evaluation else "- accuracy: not measured (no --data)")
    s = report["settings"]
    parts = [f"# {report['model']} ({report['kind']}): suite of {report['created_at']}", "",
             markdown_table(report), "", *device_lines(report), eval_line,
             f"- sweep: batch {s['batch']}, seq {s['seq']}, {s['iterations']} iterations after "
             f"{s['warmup']} warm-up" + (f", {s['new_tokens']} new tokens per run"
                                         if report["kind"] == "decoder" else ""),
             *trtexec_lines(report)]
    notes = [f"- {r['backend']}: {n}" for r in report["results"] for n in r.get("notes") or []]
    return "\n".join(parts + notes) + "\n"
