"""Train from a run file: ``python -m train.run --config configs/features.toml``.

The file (TOML; YAML with PyYAML; JSON) names the task, the data, the model sizes, the training
knobs and the output folder (``train.run_config`` lists the keys). It is checked first, every
key filled with its default, and the resolved config written to
``<output dir>/resolved_config.toml`` before the task's own CLI runs (``train.imdb``,
``train.features``, ``train.tinystories``) with the equivalent command line, so
``python -m train.run --config <output dir>/resolved_config.toml`` repeats the run. Under
torchrun every rank reads the same file; rank 0 writes the record.

    python -m train.run --config configs/imdb.toml
    python -m train.run --config checkpoints/features/resolved_config.toml --resume
"""
from __future__ import annotations

import shlex
from pathlib import Path

import click

from common.errors import ToolkitError, exit_on_toolkit_error
from common.fileio import atomic_write_text
from train.run_config import TASKS, load_run_config, resolve, task_module, to_argv, to_toml

RESOLVED_NAME = "resolved_config.toml"


def check_resume_record(record: Path, text: str) -> None:
    """A resumed run continues the recorded one: the config must be the same."""
    if not record.is_file():
        return
    old = [line for line in record.read_text(encoding="utf-8").splitlines()
           if line and not line.startswith("#")]
    new = [line for line in text.splitlines() if line and not line.startswith("#")]
    if old != new:
        raise ToolkitError(f"--resume with another config than {record} "
                           f"({first_difference(old, new)}): resume with --config {record}, "
                           "or train into another output dir")


def first_difference(old: list, new: list) -> str:
    """The first line that differs, or the first one only one side has, as text."""
    for a, b in zip(old, new):
        if a != b:
            return f"{b!r} where the record has {a!r}"
    if len(new) < len(old):
        return f"the record's {old[len(new)]!r} is missing"
    return f"{new[len(old)]!r} is not in the record"


@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
              help="run file: .toml, .yaml/.yml (needs PyYAML) or .json")
@click.option("--out-dir", type=click.Path(path_type=Path), default=None,
              help="override the file's output.dir")
@click.option("--resume", is_flag=True, help="continue the run from <output dir>/last.pt")
@click.option("--dry-run", is_flag=True,
              help="check the file and print the resolved config and the command; train nothing")
@exit_on_toolkit_error
def main(config_path: Path, out_dir: Path | None, resume: bool, dry_run: bool) -> None:
    """Train the task a run file describes, recording its resolved config beside the
    checkpoints."""
    task, keys, given = load_run_config(config_path)
    if out_dir is not None:
        given["output.dir"] = str(out_dir)
    values = resolve(task, keys, given)
    out = Path(values["output.dir"])
    argv = to_argv(keys, values) + (["--resume"] if resume else [])
    module = TASKS[task][0]
    header = [f"Resolved by train.run from {config_path}: every key with its value.",
              f"Repeat: python -m train.run --config {out / RESOLVED_NAME}",
              f"Same as: python -m {module} {shlex.join(argv)}"]
    text = to_toml(task, keys, values, header)
    if dry_run:
        click.echo(text, nl=False)
        return
    if resume:  # every rank checks, so all of them stop on a mismatch
        check_resume_record(out / RESOLVED_NAME, text)
    from train.distributed import _env_int  # torchrun's RANK, a bad value in one line

    if _env_int("RANK", 0) == 0:
        atomic_write_text(out / RESOLVED_NAME, text)
        click.echo(f"{task}: python -m {module} {shlex.join(argv)}")
        click.echo(f"wrote {out / RESOLVED_NAME}")
    task_module(task).main.main(args=argv, prog_name=f"python -m {module}",
                                standalone_mode=False)


if __name__ == "__main__":
    main()
