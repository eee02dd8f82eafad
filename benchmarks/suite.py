"""Every backend this machine has, side by side on one model: accuracy next to speed.

    python -m benchmarks.suite --model imdb --data ../shared/data/imdb --out-dir results/suite
    python -m benchmarks.suite --model stories --data ../shared/data/tinystories \
        --checkpoint checkpoints/stories/best.pt --max-samples 200

Rows: ``benchmarks.backends`` (PyTorch on the host with ``--checkpoint``, ONNX Runtime CPU
FP32 / INT8 Q/DQ / FP16, CUDA and TensorRT execution providers, our TensorRT plans, DLA); a
backend missing here is a row saying why. Per row: the calibration gate's accuracy (IMDB) or
loss and bits/byte (TinyStories) on the evaluation split (``--max-samples`` of it, stated in the
output; ``--full`` for all of it), the latency sweep of ``runtime/bench.py`` over ``--batch`` x
``--seq``, prefill/decode tokens/s and per-token time against position (decoder), peak host and
device memory, size on disk, engine build time (manifest), power and energy per inference or
token on a Jetson (tegrastats), and trtexec's GPU compute time beside TensorRT rows.

Writes ``<out-dir>/<model>.json`` (device state, versions, settings, rows), ``<model>.md`` (the
table) and PNG plots (``benchmarks.plots``). Exit 1 when a row failed (the files are written
first), 2 on bad input.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence

import click

from benchmarks import backends as bk
from common.errors import ToolkitError, exit_on_toolkit_error

DEFAULT_MAX_SAMPLES = {"classifier": 2000, "decoder": 200}
DEFAULT_ROUNDS = 5  # interleaved rounds per figure (see benchmarks.regress for the spread)
FAILED = "failed"
RAN = "ran"


def device_state() -> Dict[str, Any]:
    """``jetson.device_state.collect()`` (module, JetPack, power mode, clocks, CPU, versions),
    plus the package versions of runtime/bench.py's environment."""
    from benchmarks.host_fingerprint import describe
    from runtime.bench import environment

    state: Dict[str, Any] = {"environment": environment(), "host": describe()}
    try:
        from jetson.device_state import collect
    except ImportError as exc:
        state["device"] = None
        state["device_note"] = f"jetson.device_state is not available ({exc})"
        return state
    state["device"] = collect()
    return state


def build_context(model: str, models_dir: Path, data: str | None, split: str | None,
                  max_samples: int | None, full: bool, settings: Dict[str, Any]):
    from benchmarks.runners import SuiteContext
    from common.artifacts import load_onnx_sidecar, tokenizer_path

    onnx = Path(models_dir) / f"{model}.onnx"
    if not onnx.is_file():
        raise ToolkitError(f"{onnx} does not exist: export it first (make onnx MODEL={model})")
    sidecar = load_onnx_sidecar(onnx)
    kind = sidecar["kind"]
    eval_data = None
    if data is not None:
        from benchmarks.accuracy import load_eval, load_eval_set

        limit = None if full else (max_samples or DEFAULT_MAX_SAMPLES[kind])
        eval_data = (load_eval_set(data) if str(data).endswith(".npz")
                     else load_eval(onnx, data, split, limit))
    context_positions = settings["positions"]
    return SuiteContext(
        name=model, kind=kind, onnx=onnx, sidecar=sidecar,
        tokenizer_file=tokenizer_path(onnx, sidecar), eval_data=eval_data,
        batches=settings["batch"], seqs=settings["seq"], new_tokens=settings["new_tokens"],
        positions=context_positions, warmup=settings["warmup"],
        iterations=settings["iterations"])


def _measure_row(backend: bk.Backend, ctx) -> Dict[str, Any]:
    if backend.engine == "pytorch":
        from benchmarks.host_torch import measure_torch_row

        return measure_torch_row(backend, ctx)
    from benchmarks.runners import measure_session_row

    return measure_session_row(backend, ctx)


def run_rows(rows: Sequence[bk.Backend], ctx, progress: bool = True, rounds: int = 1,
             round_spec: Dict[str, Any] | None = None) -> List[Dict[str, Any]]:
    """Measure every ready row; a row that cannot run records why (status 'failed: ...').
    With ``rounds`` > 1 the timed figures are medians over interleaved rounds
    (``repeat_rounds``; ``round_spec``: what a round process needs, see run_suite)."""
    from tqdm import tqdm

    results = []
    bar = tqdm(rows, desc=f"suite {ctx.name}", unit="backend", disable=not progress)
    for backend in bar:
        bar.set_postfix_str(backend.name)
        out = backend.row()
        if backend.ready:
            try:
                out.update(_measure_row(backend, ctx))
                out["status"] = RAN
            except bk.NotAvailable as exc:
                out.update(status=bk.NOT_AVAILABLE, reason=str(exc))
            except ToolkitError as exc:
                out.update(status=FAILED, reason=str(exc))
        results.append(out)
    repeat_rounds(results, rounds, round_spec or {}, progress)
    return results


def repeat_rounds(results: List[Dict[str, Any]], rounds: int, spec: Dict[str, Any],
                  progress: bool = True) -> None:
    """Rounds 2..``rounds``: every row that ran is timed again, once per round, each round in a
    fresh process (``benchmarks.suite_round``: a run-long load or the process's placement then
    shows in the spread) and the first row rotating round by round (backends alternate, never
    one backend's repeats back to back). Accuracy is measured in the first round only. Each
    row's latency, per-token and energy figures become the median over the rounds;
    ``row["rounds"]`` keeps every timed figure's per-round values, from which
    ``benchmarks.regress`` takes its tolerances."""
    from tqdm import tqdm

    from benchmarks.compare import timed_figures
    from benchmarks.measure import median_of_rounds

    ran = {r["backend"]: r for r in results if r.get("status") == RAN}
    measured = {name: [row] for name, row in ran.items()}
    live = list(ran)
    for k in tqdm(range(1, rounds), desc="rounds", unit="round", disable=not progress or not live):
        shift = k % max(len(live), 1)
        got = _round_in_process({**spec, "backends": live[shift:] + live[:shift]})
        for name, error in got["errors"].items():  # keep what was measured; say why it stopped
            ran[name].setdefault("notes", []).append(f"round {k + 1} failed: {error}")
            live.remove(name)
        for name, figures in got["rows"].items():
            measured[name].append(figures)
    for name, row in ran.items():
        per_round = measured[name]
        figures = [timed_figures({**m, "backend": name}) for m in per_round]
        row["rounds"] = {fig: [f.get(fig) for f in figures] for fig in figures[0]}
        for key in ("latency", "per_token", "energy"):
            if key in row:
                row[key] = median_of_rounds([m.get(key) for m in per_round])


def _round_in_process(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Run one round with ``python -m benchmarks.suite_round`` (same interpreter and
    environment, from the project root); ToolkitError with its stderr when it fails."""
    import subprocess
    import sys
    import tempfile

    from common.fileio import atomic_write_json, read_json

    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="suite-round-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        atomic_write_json(spec_path, spec)
        done = subprocess.run([sys.executable, "-m", "benchmarks.suite_round", str(spec_path),
                               str(out_path)], cwd=str(root), capture_output=True,
                              text=True)
        if done.returncode != 0 or not out_path.is_file():
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            raise ToolkitError(f"a timing round (python -m benchmarks.suite_round) failed with "
                               f"exit {done.returncode}: {tail}")
        return read_json(out_path, "suite round")


def run_suite(model: str, models_dir: Path, engines_dir: Path, data: str | None = None,
              split: str | None = None, checkpoint: Path | None = None,
              max_samples: int | None = None, full: bool = False,
              batch: Sequence[int] = (1, 8), seq: Sequence[int] | None = None,
              new_tokens: int = 32, positions: Sequence[int] | None = None, warmup: int = 3,
              iterations: int = 20, only: Sequence[str] | None = None,
              use_trtexec: bool = True, progress: bool = True,
              rounds: int = DEFAULT_ROUNDS) -> Dict[str, Any]:
    """Run the suite and return the report (what ``<model>.json`` holds)."""
    from benchmarks.ratios import default_positions
    from benchmarks.trtexec import find_trtexec
    from common.artifacts import axis_range, load_onnx_sidecar
    from runtime.bench import utc_now

    sidecar = load_onnx_sidecar(Path(models_dir) / f"{model}.onnx") \
        if (Path(models_dir) / f"{model}.onnx").is_file() else None
    if sidecar is None:
        raise ToolkitError(f"{Path(models_dir) / (model + '.onnx')} does not exist: export it "
                           f"first (make onnx MODEL={model})")
    if seq is None:
        longest = axis_range(sidecar, "seq" if sidecar["kind"] == "classifier" else "new")[1]
        seq = sorted({min(64, longest), longest}) if sidecar["kind"] == "classifier" \
            else [min(16, longest)]
    if rounds < 1:
        raise ToolkitError(f"rounds={rounds}: expected at least 1")
    settings = {"batch": list(batch), "seq": list(seq), "new_tokens": new_tokens,
                "warmup": warmup, "iterations": iterations, "rounds": rounds,
                "positions": list(positions or default_positions(int(sidecar["max_seq_len"])))}
    ctx = build_context(model, models_dir, data, split, max_samples, full, settings)
    state = device_state()
    ctx.is_jetson = bool((state.get("device") or {}).get("is_jetson"))
    ctx.trtexec = find_trtexec() if use_trtexec else None
    rows = bk.discover(model, models_dir, engines_dir, checkpoint, only)
    spec = {"model": model, "models_dir": str(Path(models_dir).resolve()),
            "engines_dir": str(Path(engines_dir).resolve()), "settings": settings,
            "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
            "is_jetson": ctx.is_jetson}
    results = run_rows(rows, ctx, progress, rounds, spec)
    evaluation = None
    if ctx.eval_data is not None:
        evaluation = {"split": ctx.eval_data.split, "samples": len(ctx.eval_data.rows),
                      "subset": "whole split" if full else
                      "fixed random subset" if ctx.kind == "classifier" else "first windows",
                      "data": str(data)}
    return {"tool": "benchmarks.suite", "created_at": utc_now(), "model": model,
            "kind": ctx.kind, "onnx": str(ctx.onnx), "state": state, "settings": settings,
            "evaluation": evaluation, "trtexec": ctx.trtexec, "results": results}


def write_outputs(report: Dict[str, Any], out_dir: Path, plots: bool = True) -> List[Path]:
    from benchmarks.markdown import markdown_report
    from common.fileio import atomic_write_json, atomic_write_text

    out_dir = Path(out_dir)
    name = report["model"]
    written = [atomic_write_json(out_dir / f"{name}.json", report),
               atomic_write_text(out_dir / f"{name}.md", markdown_report(report))]
    if plots:
        from benchmarks.plots import write_plots

        written += write_plots(report, out_dir)
    return written


def _ints(text: str | None, what: str) -> List[int] | None:
    from runtime.bench import parse_int_list

    return parse_int_list(text, what) if text else None


@click.command(context_settings={"show_default": True})
@click.option("--model", required=True, help="model name: imdb | stories (files <name>.*)")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("models"))
@click.option("--engines-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("engines"))
@click.option("--data", default=None,
              help="evaluation data: sample | hub | DIR, or an .eval.npz [default: no accuracy]")
@click.option("--split", default=None, help="evaluation split [default: test / valid]")
@click.option("--max-samples", type=int, default=None,
              help="reviews / windows evaluated [default: 2000 / 200]")
@click.option("--full", is_flag=True, help="evaluate the whole split")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="the .pt the ONNX came from: adds the PyTorch eager row (host only)")
@click.option("--batch", "batch_text", default="1,8", help="batch sizes")
@click.option("--seq", "seq_text", default=None,
              help="classifier lengths / decoder prompt lengths [default: 64 and the longest / 16]")
@click.option("--new-tokens", default=32, type=int, help="decoder: tokens per sweep run")
@click.option("--positions", "positions_text", default=None,
              help="decoder: positions of the per-token figures [default: 10,400 or scaled]")
@click.option("--warmup", default=3, type=int)
@click.option("--iterations", default=20, type=int, help="timed calls per point and round")
@click.option("--rounds", default=DEFAULT_ROUNDS, type=int,
              help="interleaved rounds: every row once per round, figures their median")
@click.option("--backend", "only", multiple=True, help="run only these rows (repeatable)")
@click.option("--no-trtexec", is_flag=True, help="skip trtexec beside TensorRT rows")
@click.option("--no-plots", is_flag=True)
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("results/suite"))
@exit_on_toolkit_error
def main(model, models_dir, engines_dir, data, split, max_samples, full, checkpoint,
         batch_text, seq_text, new_tokens, positions_text, warmup, iterations, rounds, only,
         no_trtexec, no_plots, out_dir) -> None:
    """Run every backend available here on one model; write JSON, Markdown and PNGs."""
    from benchmarks.markdown import markdown_table

    if iterations < 1 or warmup < 0 or new_tokens < 1:
        raise ToolkitError("expected --iterations >= 1, --warmup >= 0, --new-tokens >= 1")
    if max_samples is not None and max_samples < 1:
        raise ToolkitError(f"--max-samples {max_samples}: expected at least 1")
    report = run_suite(model, models_dir, engines_dir, data, split, checkpoint, max_samples,
                       full, _ints(batch_text, "--batch"), _ints(seq_text, "--seq"),
                       new_tokens, _ints(positions_text, "--positions"), warmup, iterations,
                       list(only) or None, not no_trtexec, rounds=rounds)
    click.echo(markdown_table(report))
    for path in write_outputs(report, out_dir, plots=not no_plots):
        click.echo(f"wrote {path}")
    failed = [r["backend"] for r in report["results"] if r["status"] == FAILED]
    if failed:
        click.echo(f"error: {len(failed)} backend(s) failed: {', '.join(failed)} "
                   "(the reason is in the table)", err=True)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
