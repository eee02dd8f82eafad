"""Print this device's state as JSON (module, JetPack, L4T, power mode, clocks, temperatures,
TensorRT/CUDA/Python versions); benchmarks and engine manifests record the same dict.

    python -m jetson.state                      # JSON on stdout
    python -m jetson.state --output results/device_state.json
    python -m jetson.state --summary            # one "name: version" line each
    python jetson/state.py --root /tmp/fake     # a fake filesystem tree (tests)
"""
from __future__ import annotations

if __package__ in (None, ""):  # run by path: the repository root replaces jetson/ on sys.path
    import os  # (so no module in jetson/ can shadow a standard-library module)
    import sys

    _HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    sys.path.insert(0, os.path.dirname(_HERE))

import json
from pathlib import Path

import click

from common.errors import ToolkitError, exit_on_toolkit_error
from common.fileio import atomic_write_json
from jetson.device_state import collect, summary_lines


@click.command(context_settings={"show_default": True})
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write the JSON here (atomically)")
@click.option("--summary", is_flag=True, help="print 'name: version' lines instead of JSON")
@click.option("--root", default="/", help="filesystem root to read (a fake tree in tests; "
              "commands such as nvpmodel are not run unless it is /)")
@exit_on_toolkit_error
def main(output: Path | None, summary: bool, root: str) -> None:
    """Print the device state JSON (every Jetson field is null on a machine that is not one)."""
    if not Path(root).is_dir():
        raise ToolkitError(f"--root {root}: not a directory")
    state = collect(root)
    if output is not None:
        atomic_write_json(output, state)
    if summary:
        click.echo("\n".join(summary_lines(state)))
    else:
        click.echo(json.dumps(state, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
