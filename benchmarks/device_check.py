"""The first-device check: one command that exercises every device path and reports each step.

    python -m benchmarks.device_check                      # make device-check
    python -m benchmarks.device_check --out /tmp/dc --budget 600 --no-models

On a Jetson or an x86 GPU box it records versions and the device state, runs the TensorRT
parser on every fixture (and models/*.onnx) and compares its verdict with the static table
(common.trt_onnx), builds fp32/fp16/int8 engines, runs classify, generate and bench on them
against the committed references, serves them through Triton when a tritonserver is found and
runs the regression check. The steps and their dependencies are in
``benchmarks.device_check_steps``; this module runs them and writes the report.

Each step ends ``passed``, ``failed`` (with the error's last line) or ``skipped`` (with why);
a failed step never stops the run, and a step needing one that did not pass is skipped
naming it. Every step has a time budget and the whole run one (900 s by default): work runs
in subprocesses killed at the deadline, and a step over its budget is recorded failed with
"timed out". ``<out>/report.json`` and ``report.md`` are written atomically. Exit status 0
when no step failed (skips allowed), 1 otherwise, 2 for a bad option.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import click

from common.errors import ToolkitError, exit_on_toolkit_error
from common.fileio import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
STATUSES = ("passed", "failed", "skipped")
DEFAULT_BUDGET_S = 900.0  # the 15 minutes for the whole run
MESSAGE_CHARS = 400


class SkipStep(Exception):
    """Raised by a step that cannot run here; its message says why (what is missing)."""


class StepTimeout(Exception):
    """A step's work ran past its deadline (its subprocess was killed)."""


@dataclass
class Step:
    name: str
    run: Callable[[StepContext], Optional[str]]  # returns a one-line note, or None
    needs: Tuple[str, ...] = ()
    budget_s: float = 60.0


@dataclass
class StepContext:
    """What a running step may use: its deadline (step budget or what is left overall)."""

    name: str
    timeout_s: float
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)
    log: Optional[Path] = None  # where run_command appends each command's output

    def remaining(self) -> float:
        return self.timeout_s - (self.clock() - self.started)


def last_line(text: str) -> str:
    """The last non-blank line of ``text``, shortened: what a failed step's message shows."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    line = lines[-1] if lines else "no output"
    return line if len(line) <= MESSAGE_CHARS else line[:MESSAGE_CHARS - 3] + "..."


def run_command(ctx: StepContext, argv: Sequence[str], env: Optional[Dict[str, str]] = None,
                cwd: Path = ROOT) -> str:
    """Run ``argv`` within the step's deadline and return its stdout.

    The command gets its own process group, so a timeout kills whatever it started too. Its
    output goes to temporary files, not pipes: a server it leaves running in the background
    (run_triton.sh --background) would hold a pipe open forever. A non-zero exit raises
    ToolkitError with the last line of its output (stderr first: where errors go).
    """
    timeout = ctx.remaining()
    if timeout <= 0:
        raise StepTimeout(f"no time left to run {Path(argv[0]).name}")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(list(argv), cwd=str(cwd), env=env, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc)
        stdout, stderr = _read(out), _read(err)
    _append_log(ctx.log, argv, proc.returncode, stdout, stderr)
    if timed_out:
        raise StepTimeout(f"{' '.join(str(a) for a in argv[:4])} ... still running after "
                          f"{timeout:.0f} s (killed)")
    if proc.returncode != 0:
        raise ToolkitError(f"exit {proc.returncode}: {last_line(stderr or stdout)}")
    return stdout


def _read(f) -> str:
    f.seek(0)
    return f.read()


def _append_log(log: Optional[Path], argv: Sequence[str], code: Optional[int], stdout: str,
                stderr: str) -> None:
    if log is None:
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(str(a) for a in argv)}\n{stdout}{stderr}[exit {code}]\n\n")


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _result(step: Step, status: str, seconds: float, message: str) -> Dict[str, Any]:
    return {"name": step.name, "status": status, "seconds": round(seconds, 1),
            "needs": list(step.needs), "budget_s": step.budget_s, "message": message}


def _blocked_by(step: Step, done: Dict[str, Dict[str, Any]]) -> Optional[str]:
    """Why ``step`` cannot run: the first need that did not pass, with its own reason."""
    for need in step.needs:
        result = done.get(need)
        if result is None:
            return f"needs {need}, which did not run"
        if result["status"] != "passed":
            return f"needs {need}, which {result['status']}: {result['message']}"
    return None


def run_steps(steps: Sequence[Step], budget_s: float = DEFAULT_BUDGET_S,
              clock: Callable[[], float] = time.monotonic,
              echo: Callable[[str], None] = lambda line: None,
              log_dir: Optional[Path] = None) -> List[Dict[str, Any]]:
    """Run every step in order and return one record per step; never raises for a step.
    log_dir: each step's commands and their whole output go to ``<log_dir>/<step>.log``."""
    deadline = clock() + budget_s
    done: Dict[str, Dict[str, Any]] = {}
    results = []
    for step in steps:
        log = log_dir / f"{step.name}.log" if log_dir is not None else None
        result = _run_one(step, done, deadline, budget_s, clock, log)
        done[step.name] = result
        results.append(result)
        echo(f"  {result['status']:7s} {result['seconds']:6.1f} s  {step.name}"
             + (f": {result['message']}" if result["message"] else ""))
    return results


def _run_one(step: Step, done, deadline: float, budget_s: float, clock,
             log: Optional[Path]) -> Dict[str, Any]:
    blocked = _blocked_by(step, done)
    if blocked is not None:
        return _result(step, "skipped", 0.0, blocked)
    left = deadline - clock()
    if left <= 0:
        return _result(step, "failed", 0.0, f"timed out: the overall budget of {budget_s:.0f} s "
                                            "was spent before this step started")
    timeout = min(step.budget_s, left)
    ctx = StepContext(step.name, timeout, clock, clock(), log)
    try:
        note = step.run(ctx)
    except SkipStep as exc:
        return _result(step, "skipped", clock() - ctx.started, str(exc))
    except StepTimeout as exc:
        why = _budget_text(step, timeout)
        return _result(step, "failed", clock() - ctx.started, f"timed out ({why}): {exc}")
    except Exception as exc:  # noqa: BLE001 - any error of a step is its result, not ours
        text = str(exc) if isinstance(exc, ToolkitError) else f"{type(exc).__name__}: {exc}"
        return _result(step, "failed", clock() - ctx.started, last_line(text))
    seconds = clock() - ctx.started
    if seconds > timeout:  # in-process work cannot be killed: judged once it returns
        return _result(step, "failed", seconds, f"timed out: took {seconds:.1f} s "
                                                f"({_budget_text(step, timeout)})")
    return _result(step, "passed", seconds, note or "")


def _budget_text(step: Step, timeout: float) -> str:
    if timeout < step.budget_s:
        return f"{timeout:.0f} s left of the overall budget, step budget {step.budget_s:.0f} s"
    return f"step budget {step.budget_s:.0f} s"


# --- the report ----------------------------------------------------------------------------
def build_report(results: List[Dict[str, Any]], info: Dict[str, Any], budget_s: float,
                 started: str) -> Dict[str, Any]:
    failed = [r for r in results if r["status"] == "failed"]
    counts = {status: sum(r["status"] == status for r in results) for status in STATUSES}
    return {
        "format": "jetson-toolkit/device-check", "version": 1,
        "started": started, "finished": utc_now(),
        "ok": not failed, "counts": counts,
        "failed_steps": [f"{r['name']}: {r['message']}" for r in failed],
        "seconds": round(sum(r["seconds"] for r in results), 1), "budget_s": budget_s,
        "steps": results, **info,
    }


def markdown_report(report: Dict[str, Any]) -> str:
    counts = report["counts"]
    verdict = "PASSED" if report["ok"] else "FAILED"
    lines = [f"# Device check: {verdict}", "",
             f"{report['started']} .. {report['finished']}, {report['seconds']:.0f} s of "
             f"{report['budget_s']:.0f} s; {counts['passed']} passed, {counts['failed']} failed, "
             f"{counts['skipped']} skipped.", ""]
    if report["failed_steps"]:
        lines += ["## Failed", ""] + [f"- {_cell(s)}" for s in report["failed_steps"]] + [""]
    versions = report.get("versions") or {}
    if versions:
        lines += ["## Versions", "", "| component | version |", "|---|---|"]
        lines += [f"| {k} | {_cell(str(v))} |" for k, v in sorted(versions.items())] + [""]
    lines += ["## Steps", "", "| step | status | s | needs | message |", "|---|---|---|---|---|"]
    for r in report["steps"]:
        lines.append(f"| {r['name']} | {r['status']} | {r['seconds']:.1f} | "
                     f"{', '.join(r['needs']) or '-'} | {_cell(r['message'])} |")
    lines += ["", "Device state, tolerances and the per-step records: report.json.", ""]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_report(out: Path, report: Dict[str, Any]) -> Tuple[Path, Path]:
    return (atomic_write_json(out / "report.json", report),
            atomic_write_text(out / "report.md", markdown_report(report)))


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@click.command(context_settings={"show_default": True})
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("results/device-check"),
              help="report.json, report.md, engines, logs")
@click.option("--budget", "budget_s", type=click.FloatRange(min=1.0), default=DEFAULT_BUDGET_S,
              help="seconds for the whole run; a step past it is recorded 'timed out'")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("models"), help="also check <dir>/*.onnx when present")
@click.option("--no-models", is_flag=True, help="fixtures only (tests/fixtures/tiny_*)")
@click.option("--suite-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("results/suite"),
              help="suite reports (make bench-all) the regression check compares")
@exit_on_toolkit_error
def main(out: Path, budget_s: float, models_dir: Path, no_models: bool, suite_dir: Path) -> None:
    """Check this device end to end and write OUT/report.json and OUT/report.md."""
    from benchmarks.device_check_steps import DeviceCheck

    # Steps run from the repository root: every path they get is absolute.
    out, models_dir, suite_dir = out.resolve(), models_dir.resolve(), suite_dir.resolve()
    check = DeviceCheck(out, None if no_models else models_dir, suite_dir=suite_dir)
    started = utc_now()
    click.echo(f"device check: {len(check.steps)} steps, budget {budget_s:.0f} s, "
               f"report in {out}")
    results = run_steps(check.steps, budget_s, echo=click.echo, log_dir=out / "logs")
    report = build_report(results, check.info(), budget_s, started)
    json_path, md_path = write_report(out, report)
    verdict = "PASSED" if report["ok"] else "FAILED: " + "; ".join(report["failed_steps"])
    click.echo(f"device check {verdict} ({json_path}, {md_path})",
               err=not report["ok"])
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    # Run the main of benchmarks.device_check, the module the steps import: as __main__ this
    # file is a second copy whose SkipStep the steps' raise would not match.
    from benchmarks.device_check import main as device_check_main

    device_check_main()
