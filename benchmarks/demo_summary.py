"""The closing table of ``make demo``: one line per figure, read from the JSON files the steps
wrote. A missing file is shown as "not run" rather than hidden.

    python -m benchmarks.demo_summary [--root .]
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import click

Row = Tuple[str, str, str]  # (figure, value, source file)


def _read(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _row(root: Path, figure: str, rel: str, value: Callable[[Any], str]) -> Row:
    data = _read(root / rel)
    if data is None:
        return figure, "not run", rel
    try:
        return figure, value(data), rel
    except (KeyError, IndexError, TypeError, ValueError):
        return figure, "unreadable", rel


def _bench(results: List[dict], key: str, fmt: str) -> str:
    return ", ".join(f"b{r['batch']}/s{r['seq']}: {format(r[key], fmt)}" for r in results)


def summary_rows(root: Path) -> List[Row]:
    pct = "{:.2%}".format
    return [
        _row(root, "IMDB test accuracy (PyTorch)", "results/imdb-validate/test_metrics.json",
             lambda d: pct(d["accuracy"])),
        _row(root, "TinyStories valid bits/byte (PyTorch)",
             "results/stories-validate/valid_metrics.json",
             lambda d: f"{d['bits_per_byte']:.3f} (loss {d['loss']:.3f})"),
        _row(root, "IMDB accuracy FP32 / INT8 Q/DQ (ORT)", "reports/imdb.int8.json",
             lambda d: f"{pct(d['fp32']['accuracy'])} / {pct(d['int8']['accuracy'])} "
                       f"(drop {d['drop']:.2f} {d['drop_unit']})"),
        _row(root, "Stories loss FP32 / INT8 Q/DQ (ORT)", "reports/stories.int8.json",
             lambda d: f"{d['fp32']['loss']:.3f} / {d['int8']['loss']:.3f} "
                       f"(drop {d['drop']:.2f} {d['drop_unit']})"),
        _row(root, "IMDB latency p50 ms (ORT)", "results/bench_imdb.json",
             lambda d: _bench(d["results"], "p50_ms", ".2f")),
        _row(root, "Stories decode tokens/s (ORT)", "results/bench_stories.json",
             lambda d: _bench(d["results"], "decode_tokens_per_s", ".0f")),
        _row(root, "Features test accuracy (PyTorch)", "checkpoints/waves/test_metrics.json",
             lambda d: pct(d["accuracy"])),
        _row(root, "Features accuracy FP32 / INT8 Q/DQ (ORT)", "reports/waves.int8.json",
             lambda d: f"{pct(d['fp32']['accuracy'])} / {pct(d['int8']['accuracy'])} "
                       f"(drop {d['drop']:.2f} {d['drop_unit']})"),
    ]


def format_rows(rows: List[Row]) -> str:
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{figure:<{width}}  {value}" for figure, value, _ in rows)


@click.command()
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Project root holding results/ and reports/.")
def main(root: Path) -> None:
    """Print the demo's figures as one table."""
    click.echo(format_rows(summary_rows(root)))


if __name__ == "__main__":
    main()
