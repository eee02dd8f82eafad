"""The GPU check's JSON summary: step records (one JSON line each, appended by gpu_check.sh as
it goes) folded into one report, written atomically, with the versions and verdict of the
device check it ran (benchmarks.device_check's report.json) and the pytest counts from JUnit XML.

Standard library and ``common`` only: it also runs under the system python3 when the check
failed before its venv existed.
"""
from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ElementTree
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

from common.fileio import atomic_write_json

STATUSES = ("ok", "failed", "skipped")


def read_steps(path: str | os.PathLike) -> List[Dict[str, Any]]:
    """Step records ``{name, status, seconds, message}``; a torn last line is reported as a
    failed step rather than dropped."""
    steps: List[Dict[str, Any]] = []
    p = Path(path)
    if not p.is_file():
        return steps
    for number, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            step = json.loads(line)
        except ValueError:
            steps.append({"name": f"steps-file line {number}", "status": "failed",
                          "seconds": 0.0, "message": f"unreadable step record: {line[:80]!r}"})
            continue
        step["seconds"] = float(step.get("seconds") or 0.0)
        if step.get("status") not in STATUSES:
            step["message"] = f"unknown status {step.get('status')!r}: {step.get('message')}"
            step["status"] = "failed"
        steps.append(step)
    return steps


def junit_counts(path: str | os.PathLike) -> Optional[Dict[str, int]]:
    """``{tests, passed, failed, errors, skipped}`` of a pytest ``--junitxml`` file, or None."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        root = ElementTree.parse(p).getroot()
    except ElementTree.ParseError:
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failed": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        counts["tests"] += int(suite.get("tests", 0))
        counts["failed"] += int(suite.get("failures", 0))
        counts["errors"] += int(suite.get("errors", 0))
        counts["skipped"] += int(suite.get("skipped", 0))
    counts["passed"] = counts["tests"] - counts["failed"] - counts["errors"] - counts["skipped"]
    return counts


def build_summary(steps: List[Dict[str, Any]], versions: Optional[Dict[str, Any]] = None,
                  tests: Optional[Dict[str, int]] = None,
                  device_check: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    failed = [s for s in steps if s["status"] == "failed"]
    return {
        "format": "jetson-toolkit/gpu-check", "version": 1,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "ok": bool(steps) and not failed,
        "failed_steps": [f"{s['name']}: {s.get('message', '')}" for s in failed],
        "seconds": round(sum(s["seconds"] for s in steps), 1),
        "steps": steps, "versions": versions or {}, "tests": tests,
        "device_check": device_check,
    }


def read_device_check(path: Optional[str]) -> Optional[Dict[str, Any]]:
    """The device check's verdict, counts and versions from its report.json (None: no report;
    an unreadable one says so)."""
    if not path or not Path(path).is_file():
        return None
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError:
        return {"report": str(path), "error": "not valid JSON", "versions": {}}
    return {"report": str(path), "ok": report.get("ok"), "counts": report.get("counts"),
            "failed_steps": report.get("failed_steps", []),
            "versions": report.get("versions", {})}


def finalize(steps_file: str, summary_file: str, device_report: Optional[str] = None,
             junit_file: Optional[str] = None) -> int:
    """Write the summary and print one line per step; 0 when every step is ok, else 1."""
    device_check = read_device_check(device_report)
    versions = device_check.pop("versions") if device_check else {}
    summary = build_summary(read_steps(steps_file), versions,
                            junit_counts(junit_file) if junit_file else None, device_check)
    atomic_write_json(summary_file, summary)
    for step in summary["steps"]:
        print(f"  {step['status']:7s} {step['seconds']:7.1f} s  {step['name']}"
              + (f": {step['message']}" if step["status"] != "ok" and step.get("message")
                 else ""))
    verdict = "PASSED" if summary["ok"] else "FAILED: " + "; ".join(summary["failed_steps"])
    print(f"gpu check {verdict} (summary: {summary_file})", file=sys.stderr if not summary["ok"]
          else sys.stdout)
    return 0 if summary["ok"] else 1
