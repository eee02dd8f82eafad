"""One timing round of the suite, in a process of its own (``benchmarks.suite.repeat_rounds``).

    python -m benchmarks.suite_round SPEC.json OUT.json

Why a fresh process per round: on a shared machine a whole run can be 50-110% slower than the
next with a 3% spread inside it (measured on this project's 2-core host: load that lasts a run,
and where the process landed), so rounds inside one process would understate the spread the
regression check takes its tolerances from. SPEC holds the model, folders, settings and the
backends in this round's order; OUT gets ``{"rows": {backend: figures}, "errors": {...}}``.
Timing only: no accuracy, no trtexec.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict


def run_round(spec: Dict[str, Any]) -> Dict[str, Any]:
    from benchmarks import backends as bk
    from benchmarks.suite import _measure_row, build_context
    from common.errors import ToolkitError

    ctx = build_context(spec["model"], Path(spec["models_dir"]), None, None, None, False,
                        spec["settings"])
    ctx.is_jetson = bool(spec.get("is_jetson"))
    checkpoint = Path(spec["checkpoint"]) if spec.get("checkpoint") else None
    found = {b.name: b for b in bk.discover(spec["model"], Path(spec["models_dir"]),
                                            Path(spec["engines_dir"]), checkpoint,
                                            spec["backends"])}
    rows, errors = {}, {}
    for name in spec["backends"]:
        try:
            rows[name] = _measure_row(found[name], ctx)
        except ToolkitError as exc:
            errors[name] = str(exc)
    return {"rows": rows, "errors": errors}


def main(argv=None) -> None:
    from common.fileio import atomic_write_json, read_json

    spec_path, out_path = (argv or sys.argv[1:])[:2]
    atomic_write_json(out_path, run_round(read_json(spec_path, "suite round spec")))


if __name__ == "__main__":
    main()
