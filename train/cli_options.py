"""Click options generated from frozen dataclasses, so `--help` lists every default and the
dataclass stays the one place where a default is written."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Tuple, Type

import click


def dataclass_options(cls: Type, defaults: Dict[str, Any] | None = None,
                      exclude: Tuple[str, ...] = ()) -> Callable:
    """Decorator adding ``--field-name`` for each field of ``cls`` but those in ``exclude``
    (fields the command derives itself). Values the user does not give arrive as None, so
    ``build(cls, kwargs, defaults)`` can apply task defaults first."""
    defaults = defaults or {}

    def decorate(fn: Callable) -> Callable:
        for field in reversed(dataclasses.fields(cls)):
            if field.name in exclude:
                continue
            default = defaults.get(field.name, field.default)
            flag = "--" + field.name.replace("_", "-")
            if field.type in ("bool", bool):
                opt = click.option(f"{flag}/--no-{flag[2:]}", field.name, default=None,
                                   help=f"[default: {default}]")
            else:
                kind = {"int": int, "float": float, "str": str}.get(str(field.type), str)
                opt = click.option(flag, field.name, type=kind, default=None,
                                   help=f"[default: {default}]")
            fn = opt(fn)
        return fn

    return decorate


def build(cls: Type, kwargs: Dict[str, Any], defaults: Dict[str, Any] | None = None):
    """Instantiate ``cls`` from task defaults overridden by the options the user gave."""
    values = dict(defaults or {})
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in kwargs.items() if k in names and v is not None})
    return cls(**values)
