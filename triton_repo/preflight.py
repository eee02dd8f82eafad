"""Checks jetson/run_triton.sh runs before (and just after) it starts tritonserver.

Standard library only, Python 3.8, no click: it runs on the device's system ``python3`` and
inside nothing else. Each subcommand prints its answer on stdout, or one ``error: ...`` line on
stderr and exits 2:

    python3 triton_repo/preflight.py modules REPO         # modules the python models import
    python3 triton_repo/preflight.py missing MODULE...     # those this interpreter cannot find
    python3 triton_repo/preflight.py hint --python DESC [--container IMAGE] MODULE...
                                                           # the one line refusing them
    python3 triton_repo/preflight.py plans REPO --backend-trt 10.3.0 [--python-trt 10.3.0.30]
    python3 triton_repo/preflight.py version 2.51.0 [--version-compatible]  # refuses one below
                                                           # the floor (or below 2.38 for that)
    python3 triton_repo/preflight.py compatible REPO       # "version-compatible" when a served
                                                           # plan is one (before the start)

``plans`` compares each plan's manifest ``tensorrt_version`` with the TensorRT that will load
it: Triton's TensorRT backend (the libnvinfer it links) for a ``tensorrt_plan`` model, the
``tensorrt`` module of the stub's Python for a python model that opens a plan (the generator).
It prints ``version-compatible`` when a served plan needs Triton's
``--backend-config=tensorrt,version-compatible=true``: every version-compatible plan does, on
the same TensorRT release too, because it embeds a lean runtime (host code) that TensorRT only
deserializes once the runtime allows host code, and that switch is the tensorrt_backend's only
way to call ``setEngineHostCodeAllowed(true)`` (src/loader.cc LoadPlan, r23.09 and later).
The version rule for such plans is engines/manifest.py's (stdlib, imported from here).
"""
from __future__ import annotations

if __package__ in (None, ""):  # run by path: the repository root replaces triton_repo/
    import os as _os
    import sys as _sys

    _HERE = _os.path.dirname(_os.path.abspath(__file__))
    _sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != _HERE]
    _sys.path.insert(0, _os.path.dirname(_HERE))

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from common.errors import ToolkitError

# What every python model imports (triton_repo/models, runtime, common): numpy, tokenizers,
# and click (runtime modules define their CLIs at import time).
PYTHON_MODEL_MODULES = ("numpy", "tokenizers", "click")
ONNX_MODULES = ("onnxruntime",)  # a python model serving an .onnx
PLAN_MODULES = ("tensorrt", "pycuda")  # a python model serving a .plan (the generator)
# How to get each module, for the stub's interpreter on the device (a venv, run_triton.sh's
# TRITON_PYTHON_ENV) and inside an image (TRITON_CONTAINER). The one copy: run_triton.sh prints
# `preflight.py hint`'s line.
SETUP_MODULES = ("numpy", "tokenizers", "click")  # requirements/device.txt
_SETUP_HINT = ("run jetson/setup.sh (its venv .venv-jetson is found by default) or set "
               "TRITON_PYTHON_ENV to a venv with requirements/device.txt")
_MODULE_HINTS = {
    "onnxruntime": "pip install onnxruntime into that Python (or, on a Jetson, NVIDIA's "
                   "onnxruntime-gpu wheel for the JetPack)",
    "tensorrt": "use JetPack's TensorRT bindings (python3-libnvinfer; jetson/setup.sh's venv "
                "sees them through --system-site-packages), never pip install tensorrt on a "
                "Jetson",
    "pycuda": "pip install pycuda into that Python (it compiles against the CUDA toolkit: "
              "nvcc on PATH, CUDA_HOME; jetson/setup.sh builds it)",
}
_IMAGE_HINTS = {
    "tensorrt": "use the image's own TensorRT bindings (the ones matching its TensorRT), never "
                "pip install tensorrt",
    "pycuda": "build an image FROM {image} that runs pip install pycuda (it compiles against "
              "the image's CUDA toolkit)",
    "onnxruntime": "build an image FROM {image} that runs pip install onnxruntime (or NVIDIA's "
                   "Jetson onnxruntime-gpu wheel)",
}


def module_hint(missing: Sequence[str], python: str, image: Optional[str] = None) -> str:
    """One line refusing the ``missing`` modules of ``python``, with how to get each."""
    pip_modules = [m for m in missing if m in SETUP_MODULES or
                   (image and m not in _IMAGE_HINTS)]
    fixes = []
    if pip_modules:
        fixes.append((pip_modules, f"build an image FROM {image} with pip install "
                                   f"{' '.join(pip_modules)}" if image else _SETUP_HINT))
    for module in missing:
        if module not in pip_modules:
            hints = _IMAGE_HINTS if image else _MODULE_HINTS
            fixes.append(([module], hints.get(module, f"pip install {module}")
                          .format(image=image)))
    also = f" (also missing: {' '.join(missing[1:])})" if len(missing) > 1 else ""
    if len(fixes) == 1:
        fix = fixes[0][1]
    else:
        fix = "; ".join(f"for {' '.join(mods)}: {text}" for mods, text in fixes)
    return (f"the python models need module '{missing[0]}'{also}, which {python} cannot "
            f"import: {fix}")

_BACKEND = re.compile(r'^\s*backend:\s*"([A-Za-z0-9_]+)"', re.MULTILINE)
_PLATFORM = re.compile(r'^\s*platform:\s*"([A-Za-z0-9_]+)"', re.MULTILINE)


def model_kinds(repo: Path) -> Dict[str, str]:
    """{model folder: "python" | "tensorrt_plan" | "ensemble" | other backend} of a repo."""
    kinds = {}
    for config in sorted(repo.glob("*/config.pbtxt")):
        text = config.read_text(encoding="utf-8", errors="replace")
        found = _BACKEND.search(text) or _PLATFORM.search(text)
        kinds[config.parent.name] = found.group(1) if found else "unknown"
    return kinds


def _version_files(repo: Path, model: str) -> List[Path]:
    return sorted(p for p in (repo / model).iterdir() if p.is_dir() and p.name.isdigit())


def needed_modules(repo: Path) -> List[str]:
    """The Python modules the repository's python models import (empty: no python model)."""
    needed: List[str] = []
    for model, kind in model_kinds(repo).items():
        if kind != "python":
            continue
        wanted = list(PYTHON_MODEL_MODULES)
        for version in _version_files(repo, model):
            if any(version.glob("*.onnx")):
                wanted += ONNX_MODULES
            if any(version.glob("*.plan")) or any(version.glob("*.engine")):
                wanted += PLAN_MODULES
        needed += [m for m in wanted if m not in needed]
    return needed


def missing_modules(modules: Sequence[str]) -> List[str]:
    """The modules this interpreter cannot find (found, not imported: tensorrt is slow)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def served_plans(repo: Path) -> List[Tuple[Path, str, dict]]:
    """(plan, model kind, manifest) of every plan in the repository that has a manifest."""
    kinds = model_kinds(repo)
    plans = []
    for model, kind in kinds.items():
        for version in _version_files(repo, model):
            for plan in sorted(list(version.glob("*.plan")) + list(version.glob("*.engine"))):
                manifest_file = plan.with_name(plan.name + ".json")
                if not manifest_file.is_file():
                    raise ToolkitError(f"{plan}: no manifest {manifest_file.name} beside it "
                                       "(rebuild the repository with python -m triton_repo.build)")
                try:
                    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    raise ToolkitError(f"{manifest_file}: not a readable JSON manifest "
                                       f"({exc}); rebuild the repository with python -m "
                                       f"triton_repo.build") from None
                if not isinstance(manifest, dict):
                    raise ToolkitError(f"{manifest_file}: expected a JSON object (rebuild the "
                                       f"repository with python -m triton_repo.build)")
                plans.append((plan, kind, manifest))
    return plans


def _tuple(version: str) -> Tuple[int, ...]:
    from common.trt_onnx import version_tuple

    return version_tuple(version)


def known_version(here: str) -> bool:
    """A TensorRT version the plan checks can use: major and minor at least. ``"10"`` (read from
    a ``libnvinfer.so.10`` that is no symlink to the full name) would match every 10.x plan."""
    try:
        return len(_tuple(here)) >= 2
    except ToolkitError:
        return False


def same_release(built: str, here: str) -> bool:
    """``10.3.0.30`` and ``10.3.0`` agree on every component both name."""
    a, b = _tuple(built), _tuple(here)
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def is_version_compatible(manifest: dict) -> bool:
    from engines.manifest import is_version_compatible as compatible

    return compatible(manifest)


def loads_on(manifest: dict, here: str) -> bool:
    """True when TensorRT ``here`` deserializes the plan: the same release, or a
    version-compatible plan where engines/manifest.py's rule (TensorRT's) says it runs."""
    from engines.manifest import version_compatible_loads

    built = str(manifest.get("tensorrt_version") or "")
    if not built or built == "unknown":
        return True  # nothing to compare: TensorRT's own check is the last line
    if same_release(built, here):
        return True
    return is_version_compatible(manifest) and version_compatible_loads(built, here)


def served_compatible(repo: Path) -> bool:
    """True when the repository serves a version-compatible plan through the TensorRT backend
    (the server then needs Triton 2.38+ and --backend-config=tensorrt,version-compatible=true)."""
    return any(kind == "tensorrt_plan" and is_version_compatible(manifest)
               for _, kind, manifest in served_plans(repo))


def check_plans(repo: Path, backend_trt: Optional[str], python_trt: Optional[str]) -> List[str]:
    """Refuse a plan the server's TensorRT cannot load; returns notes for run_triton.sh
    ("version-compatible" when Triton must allow version-compatible plans)."""
    notes: List[str] = []
    for plan, kind, manifest in served_plans(repo):
        where = plan.relative_to(repo)
        built = str(manifest.get("tensorrt_version") or "unknown")
        if kind == "tensorrt_plan":
            here, loader = backend_trt, "the server's TensorRT backend links TensorRT"
            absent = "the server's TensorRT backend links no libnvinfer that was found"
        else:
            here, loader = python_trt, "the python models' tensorrt module is"
            absent = "the python models cannot import tensorrt"
        if here is None:
            raise ToolkitError(f"{where}: built with TensorRT {built}, but {absent}: install "
                               f"JetPack's TensorRT, or {_SETUP_HINT}")
        if not known_version(here):
            how = ("set TRITON_TENSORRT_VERSION to the server's full TensorRT version (e.g. "
                   "10.3.0)" if kind == "tensorrt_plan" else "check that python module")
            raise ToolkitError(f"{where} was built with TensorRT {built} but the TensorRT that "
                               f"loads it reads as {here!r}, not a full version that can be "
                               f"compared: {how}")
        if not loads_on(manifest, here):
            raise ToolkitError(
                f"{where} was built with TensorRT {built} but {loader} {here}: rebuild the "
                f"engine with TensorRT {here} (python -m engines.build where that TensorRT is "
                f"installed), or build it with --version-compatible (TensorRT 8.6+) and serve "
                f"it with a later TensorRT of the same major version")
        # A version-compatible plan needs host code allowed even on its own release.
        if kind == "tensorrt_plan" and is_version_compatible(manifest) and \
                "version-compatible" not in notes:
            notes.append("version-compatible")
    return notes


def _main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="preflight.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("modules").add_argument("repo", type=Path)
    sub.add_parser("missing").add_argument("module", nargs="*")
    hint = sub.add_parser("hint")
    hint.add_argument("module", nargs="+")
    hint.add_argument("--python", required=True, help="the interpreter, as the line names it")
    hint.add_argument("--container", default=None, help="the image, in container mode")
    sub.add_parser("compatible").add_argument("repo", type=Path)
    plans = sub.add_parser("plans")
    plans.add_argument("repo", type=Path)
    plans.add_argument("--backend-trt", default=None)
    plans.add_argument("--python-trt", default=None)
    version = sub.add_parser("version")
    version.add_argument("version")
    version.add_argument("--version-compatible", action="store_true",
                         help="the repository serves version-compatible plans")
    args = parser.parse_args(argv)
    try:
        if args.command == "modules":
            print(" ".join(needed_modules(args.repo)))
        elif args.command == "missing":
            print(" ".join(missing_modules(args.module)))
        elif args.command == "hint":
            print(module_hint(args.module, args.python, args.container))
        elif args.command == "compatible":
            print("version-compatible" if served_compatible(args.repo) else "")
        elif args.command == "plans":
            print(" ".join(check_plans(args.repo, args.backend_trt or None,
                                       args.python_trt or None)))
        else:
            from triton_repo.versions import (
                check_supported,
                check_version_compatible,
                version_notes,
            )

            found = check_supported(args.version)
            if args.version_compatible:
                check_version_compatible(found)
            print("\n".join([".".join(str(part) for part in found), *version_notes(found)]))
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
