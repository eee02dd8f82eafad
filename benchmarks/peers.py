"""Greedy decode speed of our runtime against the tools users would otherwise pick, same weights.

    python -m benchmarks.peers --out-dir results/peers \
        --optimum-python .venv-optimum/bin/python --genai-python .venv-genai/bin/python

Host-side (torch, transformers). On a GPT-2 at our TinyStories model's size and a small Llama
(``benchmarks.peer_models``, random seeded weights), batch 1, greedy, ``--tokens`` new tokens
after a short prompt:

- ``ours``: the runtime's Generator on the ``export.hf`` graph (ONNX Runtime CPU);
- ``transformers``: ``generate`` with its cache (PyTorch eager);
- ``optimum``: Optimum's ``ORTModelForCausalLM`` on its own export (ONNX Runtime CPU);
- ``genai``: ``onnxruntime-genai`` on its model builder's graph (fused contrib operators), Llama
  only (its builder has no GPT-2).

Every run is one process (``benchmarks/peer_worker.py``) under the peer's own venv: optimum-onnx
pins transformers < 4.58, the genai builder needs transformers 5. A peer whose venv is not given
or whose preparation fails is a row with the reason. ``--rounds`` rounds, each running every
(model, peer) once in an order that rotates round by round, so load on a shared machine hits
all alike; figures are medians with their min..max. The report also counts how many leading
tokens each peer shares with transformers (all of them expected: same weights, greedy).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import click
import numpy as np

from common.errors import ToolkitError, exit_on_toolkit_error
from common.fileio import atomic_write_json, atomic_write_text

WORKER = Path(__file__).resolve().parent / "peer_worker.py"
PEERS = ("ours", "transformers", "optimum", "genai")
POSITIONS = (10, 100, 200, 400)  # per-token time reported near these cache lengths


def run_worker(python: str, args: List[str], timeout_s: float = 900) -> Dict[str, Any]:
    """The worker's JSON line, or ToolkitError with the last line of its stderr."""
    try:
        done = subprocess.run([python, str(WORKER)] + args, capture_output=True, text=True,
                              timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolkitError(f"{python} {WORKER.name} {args[0]} {args[1]}: {exc}") from None
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["(no output)"]
        raise ToolkitError(f"{args[1]} {args[0]} failed: {lines[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1]) if args[0] == "run" else {}


def prepare_models(out_dir: Path, pythons: Dict[str, Optional[str]]) -> Dict[str, Dict]:
    """Per architecture: the HF folder, our export, and each peer's artifact or why it has none."""
    from benchmarks.peer_models import ARCHS, make_folder, prompt_ids
    from export.hf import export_hf

    models: Dict[str, Dict] = {}
    for arch in ARCHS:
        made = make_folder(out_dir / "models", arch)
        folder = Path(made["folder"])
        onnx_path = export_hf(folder, out_dir / "models" / f"{arch}_ours.onnx", max_batch=1,
                              greedy_tokens=100)
        entry = {"parameters": made["parameters"], "prompt": prompt_ids(folder),
                 "artifacts": {"ours": str(onnx_path), "transformers": str(folder)},
                 "absent": {}}
        for peer in ("optimum", "genai"):
            if peer == "genai" and arch != "llama":
                entry["absent"][peer] = "onnxruntime-genai's model builder has no GPT-2"
            elif not pythons.get(peer):
                entry["absent"][peer] = f"no venv given (--{peer}-python)"
            else:
                target = out_dir / "models" / f"{arch}_{peer}"
                try:
                    run_worker(pythons[peer], ["prepare", peer, str(folder), str(target)])
                    entry["artifacts"][peer] = str(target)
                except ToolkitError as exc:
                    entry["absent"][peer] = str(exc)
        entry["graph_nodes"] = {peer: optimized_node_count(Path(path))
                                for peer, path in entry["artifacts"].items()
                                if peer != "transformers"}
        models[arch] = entry
    return models


def optimized_node_count(artifact: Path) -> Optional[int]:
    """Nodes left after ONNX Runtime's own graph optimizations (this venv's onnxruntime, CPU),
    of an .onnx or a folder's model.onnx. At batch 1 a small decoder's step costs about a
    microsecond per node on top of its MatMuls, so this explains much of the speed table.
    None when the graph cannot be opened here."""
    import tempfile

    import onnx
    import onnxruntime as ort

    path = artifact if artifact.suffix == ".onnx" else artifact / "model.onnx"
    if not path.is_file():
        return None
    with tempfile.TemporaryDirectory(prefix="peer-graph-") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the "optimized model is hardware specific" warning
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", "weights.bin")
        try:
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except (RuntimeError, ValueError) as exc:
            print(f"node count of {path}: onnxruntime cannot open it ({exc})", file=sys.stderr)
            return None
        return len(onnx.load(options.optimized_model_filepath, load_external_data=False)
                   .graph.node)


def race(models: Dict[str, Dict], pythons: Dict[str, Optional[str]], tokens: int, rounds: int,
         threads: int) -> Dict[str, Dict[str, List[Dict]]]:
    """runs[arch][peer]: one worker result per round, the order rotating round by round."""
    from tqdm import tqdm

    jobs = [(arch, peer) for arch, m in models.items() for peer in PEERS if peer in m["artifacts"]]
    runs: Dict[str, Dict[str, List[Dict]]] = {arch: {} for arch in models}
    with tqdm(total=rounds * len(jobs), desc="peer runs", unit="run") as bar:
        for r in range(rounds):
            shift = r % len(jobs)
            for arch, peer in jobs[shift:] + jobs[:shift]:
                m = models[arch]
                result = run_worker(pythons[peer], [
                    "run", peer, m["artifacts"][peer], "--tokens", str(tokens),
                    "--threads", str(threads), "--prompt", ",".join(map(str, m["prompt"]))])
                runs[arch].setdefault(peer, []).append(result)
                bar.update()
    return runs


def summarise(arch: str, peer: str, results: List[Dict], reference: Optional[List[int]],
              tokens: int, graph_nodes: Optional[int] = None) -> Dict[str, Any]:
    from benchmarks.measure import common_prefix, median_spread, ms_near, per_token_vs_position

    positions = np.concatenate([np.asarray(r["positions"], np.int64) for r in results])
    step_ms = np.concatenate([np.asarray(r["step_ms"], np.float64) for r in results])
    # round by round (every tool ran once per round), for ratios paired within a round
    by_round = [len(r["tokens"]) / r["seconds"] for r in results]
    row = {"model": arch, "peer": peer, "status": "ran",
           "tokens_per_s": median_spread(by_round), "tokens_per_s_by_round": by_round,
           "ms_near": {str(p): ms_near(positions, step_ms, p) for p in POSITIONS},
           "curve": per_token_vs_position(positions, step_ms, bins=24),
           "tokens": len(results[0]["tokens"]), "graph_nodes": graph_nodes}
    if reference is not None:
        row["equal_prefix_vs_transformers"] = common_prefix(results[0]["tokens"], reference)
    if row["tokens"] != tokens:
        row["status"] = f"ran, but made {row['tokens']} tokens, not {tokens}"
    return row


def build_report(models, runs, tokens: int, rounds: int, threads: int) -> Dict[str, Any]:
    from runtime.bench import environment

    rows = []
    for arch, m in models.items():
        reference = runs[arch].get("transformers", [{}])[0].get("tokens")
        base = None
        for peer in PEERS:
            if peer in m["absent"]:
                rows.append({"model": arch, "peer": peer, "status": "not available",
                             "reason": m["absent"][peer]})
                continue
            row = summarise(arch, peer, runs[arch][peer], reference, tokens,
                            m.get("graph_nodes", {}).get(peer))
            base = row["tokens_per_s"]["median"] if peer == "transformers" else base
            rows.append(row)
        for row in rows:
            if row["model"] == arch and "tokens_per_s" in row and base:
                row["x_transformers"] = row["tokens_per_s"]["median"] / base
    return {"tokens": tokens, "rounds": rounds, "threads": threads, "environment": environment(),
            "models": {a: {k: m[k] for k in ("parameters", "prompt")} for a, m in models.items()},
            "rows": rows}


def _num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(report: Dict[str, Any]) -> str:
    head = ("| model | tool | status | tokens/s (min..max) | x transformers | "
            + " | ".join(f"ms/token @{p}" for p in POSITIONS)
            + " | tokens = transformers | ORT nodes |")
    lines = [head, "|" + "---|" * (7 + len(POSITIONS))]
    for row in report["rows"]:
        if "tokens_per_s" not in row:
            lines.append(f"| {row['model']} | {row['peer']} | not available: {row['reason']} |"
                         + " |" * (4 + len(POSITIONS)))
            continue
        t = row["tokens_per_s"]
        near = " | ".join(_num(row["ms_near"][str(p)], ".3f") for p in POSITIONS)
        equal = row.get("equal_prefix_vs_transformers")
        equal_text = "-" if equal is None else f"{equal}/{row['tokens']}"
        lines.append(f"| {row['model']} | {row['peer']} | {row['status']} | "
                     f"{t['median']:.0f} ({t['min']:.0f}..{t['max']:.0f}) | "
                     f"{_num(row.get('x_transformers'), '.2f')} | {near} | "
                     f"{equal_text} | {_num(row.get('graph_nodes'), 'd')} |")
    return "\n".join(lines) + "\n"


def plot(report: Dict[str, Any], path: Path) -> Path:
    """Per-token ms against position, one panel per model, one line per tool."""
    from benchmarks.plots import _finish, _pyplot

    plt = _pyplot()
    archs = list(report["models"])
    fig, axes = plt.subplots(1, len(archs), figsize=(6 * len(archs), 4), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        for row in report["rows"]:
            if row["model"] == arch and row.get("curve"):
                ax.plot([c["position"] for c in row["curve"]], [c["ms"] for c in row["curve"]],
                        marker=".", label=row["peer"])
        ax.set(title=f"{arch}: batch 1 greedy decode", xlabel="positions in the cache",
               ylabel="ms per token")
        ax.set_ylim(bottom=0)
        ax.legend()
    return _finish(plt, fig, path)


@click.command(context_settings={"show_default": True})
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("results/peers"))
@click.option("--tokens", type=click.IntRange(16, 490), default=450, help="new tokens per run")
@click.option("--rounds", type=click.IntRange(1), default=5)
@click.option("--threads", type=click.IntRange(1), default=2, help="intra-op threads per tool")
@click.option("--optimum-python", help="python of a venv with optimum-onnx (transformers<4.58)")
@click.option("--genai-python", help="python of a venv with onnxruntime-genai and transformers 5")
@exit_on_toolkit_error
def main(out_dir: Path, tokens: int, rounds: int, threads: int, optimum_python, genai_python):
    """Race our runtime against transformers, Optimum and onnxruntime-genai on the same weights."""
    for option, python in (("--optimum-python", optimum_python), ("--genai-python", genai_python)):
        if python and not Path(python).is_file():
            raise ToolkitError(f"{option} {python}: no such interpreter")
    pythons = {"ours": sys.executable, "transformers": sys.executable,
               "optimum": optimum_python, "genai": genai_python}
    models = prepare_models(out_dir, pythons)
    runs = race(models, pythons, tokens, rounds, threads)
    report = build_report(models, runs, tokens, rounds, threads)
    atomic_write_json(out_dir / "peers.json", report)
    table = markdown(report)
    atomic_write_text(out_dir / "peers.md", table)
    picture = plot(report, out_dir / "peers_per_token.png")
    click.echo(table)
    click.echo(f"wrote {out_dir / 'peers.json'}, {out_dir / 'peers.md'}"
               + (f", {picture}" if picture else ""))


if __name__ == "__main__":
    main()
