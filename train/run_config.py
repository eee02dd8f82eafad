"""The run-config schema: which keys a TOML/YAML run file takes, their checks, their defaults.

The keys are the options of the training CLIs (``train.imdb``, ``train.tinystories``,
``train.features``), read from the click commands themselves, so a config can say everything a
command line can and nothing else, and every flag keeps working on the command line::

    task = "token_classifier" | "feature_classifier" | "decoder_lm"
    [data]      source, limit, val_size | val_stories | val_fraction, split_seed, format, labels
    [data.columns]  id, step, label, features          (feature_classifier)
    [model]     the model config's fields (d_model, n_layers, ...), gpt2_tokenizer
    [training]  TrainConfig's fields (epochs, lr, seed, ...) and the task's knobs
    [output]    dir

Every error is one line naming the file and the key: an unknown key lists the allowed ones,
a bad value says what was expected.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import click

from common.errors import ToolkitError

TASKS = {  # task -> (module, model config class)
    "token_classifier": ("train.imdb", "ClassifierConfig"),
    "feature_classifier": ("train.features", "ClassifierConfig"),
    "decoder_lm": ("train.tinystories", "DecoderConfig"),
}
SECTIONS = ("data", "model", "training", "output")
# Options that do not live in [model] or [training]: option name -> (section, key).
PLACEMENT = {
    "data_source": ("data", "source"),
    "fmt": ("data", "format"),
    "limit": ("data", "limit"),
    "val_size": ("data", "val_size"),
    "val_stories": ("data", "val_stories"),
    "val_fraction": ("data", "val_fraction"),
    "split_seed": ("data", "split_seed"),
    "label_names": ("data", "labels"),
    "id_column": ("data.columns", "id"),
    "step_column": ("data.columns", "step"),
    "label_column": ("data.columns", "label"),
    "feature_columns": ("data.columns", "features"),
    "gpt2_dir": ("model", "gpt2_tokenizer"),
    "out_dir": ("output", "dir"),
}
CLI_ONLY = ("resume",)  # train.run --resume, never recorded
LIST_OPTIONS = ("feature_columns", "label_names")  # a list in the file, "a,b" on the CLI


@dataclass(frozen=True)
class Key:
    section: str  # "data", "data.columns", "model", "training", "output"
    key: str
    option: click.Option
    default: Any  # None: not set (the command decides, e.g. from the data)

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def expected(self) -> str:
        if self.option.name in LIST_OPTIONS:
            return "a list of names"
        kind = self.option.type
        if isinstance(kind, click.Choice):
            return "one of " + ", ".join(repr(c) for c in kind.choices)
        return {"integer": "an integer", "float": "a number", "boolean": "true or false"}.get(
            kind.name, "a string")


def task_module(task: str):
    return importlib.import_module(TASKS[task][0])


def schema(task: str) -> Dict[str, Key]:
    """``{dotted key: Key}`` of a task, from its click command and its defaults."""
    from train import model as models
    from train.trainer import TrainConfig

    module = task_module(task)
    model_cls = getattr(models, TASKS[task][1])
    model_defaults = {f.name: f.default for f in dataclasses.fields(model_cls)}
    model_defaults.update(module.MODEL_DEFAULTS)
    for name in getattr(module, "FROM_DATA", ()):  # derived from the data when not set
        model_defaults[name] = None
    train_defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    train_defaults.update(module.TRAIN_DEFAULTS)
    keys: Dict[str, Key] = {}
    for option in module.main.params:
        name = option.name
        if name in CLI_ONLY:
            continue
        if name in PLACEMENT:
            section, key = PLACEMENT[name]
            default = option.default
        elif name in model_defaults:
            section, key, default = "model", name, model_defaults[name]
        else:
            section, key = "training", name
            default = train_defaults.get(name, option.default)
        if isinstance(default, Path):
            default = str(default)
        if name in LIST_OPTIONS and default is not None:
            default = default.split(",")
        entry = Key(section, key, option, default)
        keys[entry.dotted] = entry
    return keys


def read_file(path: Path) -> Dict[str, Any]:
    """The run file as a dict: TOML (tomllib, or tomli before Python 3.11), YAML (PyYAML) or
    JSON, by extension."""
    if not path.is_file():
        raise ToolkitError(f"run config not found: {path}")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python < 3.11
                try:
                    import tomli as tomllib
                except ImportError:
                    raise ToolkitError(f"{path}: reading TOML before Python 3.11 needs tomli "
                                       "(pip install tomli)") from None
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ToolkitError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), "
                                   "or write the config as .toml") from None
            data = yaml.safe_load(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ToolkitError(f"{path}: unknown config format {suffix!r}: expected .toml, "
                               ".yaml/.yml or .json")
    except ToolkitError:
        raise
    except Exception as exc:  # tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ToolkitError(f"{path}: not valid {suffix.lstrip('.').upper()} ({first})") from None
    if not isinstance(data, dict):
        raise ToolkitError(f"{path}: expected a table of keys at the top level")
    return data


def check_value(path: Path, entry: Key, value: Any) -> Any:
    """``value`` if it suits ``entry``'s option (an int where a float is expected becomes a
    float), else a one-line error naming the key, the value and what was expected."""
    kind, ok = entry.option.type, False
    if entry.option.name in LIST_OPTIONS:
        ok = isinstance(value, list) and bool(value) and all(
            isinstance(v, str) and v and "," not in v for v in value)
    elif isinstance(kind, click.Choice):
        ok = isinstance(value, str) and value in kind.choices
    elif kind.name == "boolean":
        ok = isinstance(value, bool)
    elif kind.name == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind.name == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str) and value != ""
    if not ok:
        raise ToolkitError(f"{path}: {entry.dotted} = {value!r}: expected {entry.expected}")
    return value


def _flatten(path: Path, data: Dict[str, Any], keys: Dict[str, Key]) -> Dict[str, Any]:
    """``{dotted key: value}`` of the sections; unknown sections and keys are errors."""
    values: Dict[str, Any] = {}
    tables = [(s, data[s]) for s in SECTIONS if s in data]
    while tables:
        section, table = tables.pop(0)
        if not isinstance(table, dict):
            raise ToolkitError(f"{path}: [{section}] must be a table of keys, not {table!r}")
        allowed = sorted({k.key for k in keys.values() if k.section == section} |
                         {k.section.split(".")[1] for k in keys.values()
                          if k.section.startswith(section + ".")})
        for key, value in table.items():
            dotted = f"{section}.{key}"
            if dotted in keys:
                if value is not None:  # YAML null: the default
                    values[dotted] = check_value(path, keys[dotted], value)
            elif any(k.section == dotted for k in keys.values()):
                tables.append((dotted, value))
            else:
                raise ToolkitError(f"{path}: unknown key {dotted!r}; [{section}] takes "
                                   f"{', '.join(allowed)}")
    return values


def load_run_config(path: Path) -> Tuple[str, Dict[str, Key], Dict[str, Any]]:
    """-> (task, its schema, ``{dotted key: value}`` of the keys the file sets)."""
    data = read_file(path)
    unknown = [k for k in data if k not in ("task", *SECTIONS)]
    if unknown:
        raise ToolkitError(f"{path}: unknown key {unknown[0]!r}; the top level takes task, "
                           f"{', '.join(SECTIONS)}")
    task = data.get("task")
    if task not in TASKS:
        raise ToolkitError(f"{path}: task = {task!r}: expected one of "
                           f"{', '.join(repr(t) for t in TASKS)}")
    keys = schema(task)
    given = _flatten(path, data, keys)
    check_model(path, task, resolve_defaults(keys, given))
    return task, keys, given


def resolve_defaults(keys: Dict[str, Key], given: Dict[str, Any]) -> Dict[str, Any]:
    return {dotted: given.get(dotted, entry.default) for dotted, entry in keys.items()}


def check_model(path: Path, task: str, values: Dict[str, Any]) -> None:
    """Build the model config now, so a bad size or choice names the file before training."""
    from train import model as models

    cls = getattr(models, TASKS[task][1])
    names = {f.name for f in dataclasses.fields(cls)}
    fields = {d.split(".", 1)[1]: v for d, v in values.items()
              if d.startswith("model.") and d.split(".", 1)[1] in names and v is not None}
    try:
        cls(**fields)
    except ToolkitError as exc:
        raise ToolkitError(f"{path}: [model] {exc}") from None


def resolve(task: str, keys: Dict[str, Key], given: Dict[str, Any]) -> Dict[str, Any]:
    """Every key with its value: the given one, else the default (None: left unset). A token
    task's unset data source is resolved now ($DATA_DIR, $DATA, hub), so the record names it."""
    values = resolve_defaults(keys, given)
    if task != "feature_classifier" and values.get("data.source") is None:
        from train.data import resolve_data_source

        values["data.source"] = resolve_data_source(None)
    return values


def to_argv(keys: Dict[str, Key], values: Dict[str, Any]) -> List[str]:
    """The command line of the task's CLI that sets ``values``."""
    argv: List[str] = []
    for dotted, value in values.items():
        if value is None:
            continue
        option = keys[dotted].option
        if option.type.name == "boolean":
            argv.append(option.opts[0] if value else option.secondary_opts[0])
        elif option.name in LIST_OPTIONS:
            argv += [option.opts[0], ",".join(value)]
        else:
            argv += [option.opts[0], repr(value) if isinstance(value, float) else str(value)]
    return argv


def to_toml(task: str, keys: Dict[str, Key], values: Dict[str, Any],
            header: Optional[List[str]] = None) -> str:
    """The resolved config as TOML (unset keys left out), readable by ``load_run_config``."""
    lines = [f"# {line}" for line in header or []] + [f"task = {json.dumps(task)}"]
    sections = ["data", "data.columns", "model", "training", "output"]
    for section in sections:
        rows = [(k.key, values[d]) for d, k in keys.items()
                if k.section == section and values.get(d) is not None]
        if rows:
            lines += ["", f"[{section}]"] + [f"{key} = {_toml_value(v)}" for key, v in rows]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if value == value and abs(value) != float("inf") else (
            "nan" if value != value else ("inf" if value > 0 else "-inf"))
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's
