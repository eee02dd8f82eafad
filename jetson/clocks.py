"""jetson_clocks around a measurement: store the clocks, pin them at their maximum, restore them.

``with locked_clocks(): measure()`` runs ``jetson_clocks --store FILE``, ``jetson_clocks``, then
``jetson_clocks --restore FILE`` on the way out, also when the block raises. jetson_clocks needs
root: as another user the commands go through ``sudo -n`` (never a password prompt), and a
refusal is a one-line ToolkitError. ``clocks_locked()`` reads ``jetson_clocks --show`` with
jtop's rule: every online CPU and the GPU run with min = max = current (EMC is not compared:
jetson_clocks leaves its minimum alone). Where ``--show`` needs root that we lack, the jtop
service (jetson-stats, optional) is asked instead, since it runs as root.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from common.errors import ToolkitError
from jetson.commands import Runner, run_command

log = logging.getLogger(__name__)

_CPU_LINE = re.compile(r"^cpu(\d+): Online=(\d) .*?MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)")
_GPU_LINE = re.compile(r"^GPU MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)")
_EMC_LINE = re.compile(r"^EMC MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)")
_POWER_MODE = re.compile(r"^NV Power Mode: (.+)$")


def parse_jetson_clocks_show(text: str) -> Dict[str, Any]:
    """``jetson_clocks --show`` -> ``{"cpus": {0: {online, min, max, current}}, "gpu": {...},
    "emc": {...}, "power_mode": name}`` (frequencies as printed: kHz for CPUs, Hz otherwise)."""
    out: Dict[str, Any] = {"cpus": {}, "gpu": None, "emc": None, "power_mode": None}
    for raw in text.splitlines():
        line = raw.strip()
        match = _CPU_LINE.match(line)
        if match:
            idx, online, lo, hi, cur = (int(g) for g in match.groups())
            out["cpus"][idx] = {"online": online == 1, "min": lo, "max": hi, "current": cur}
            continue
        for key, pattern in (("gpu", _GPU_LINE), ("emc", _EMC_LINE)):
            match = pattern.match(line)
            if match:
                lo, hi, cur = (int(g) for g in match.groups())
                out[key] = {"min": lo, "max": hi, "current": cur}
        match = _POWER_MODE.match(line)
        if match:
            out["power_mode"] = match.group(1).strip()
    return out


def clocks_locked_from_show(show: Dict[str, Any]) -> Optional[bool]:
    """True when every online CPU and the GPU sit at min = max = current; None when the output
    held neither (not jetson_clocks output)."""
    checks: List[bool] = []
    for cpu in show["cpus"].values():
        if cpu["online"]:
            checks.append(cpu["min"] == cpu["max"] == cpu["current"])
    if show["gpu"] is not None:
        gpu = show["gpu"]
        checks.append(gpu["min"] == gpu["max"] == gpu["current"])
    return all(checks) if checks else None


def _as_root(cmd: Sequence[str]) -> List[str]:
    """cmd as is when we are root, else through ``sudo -n`` (fails instead of prompting)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return list(cmd)
    sudo = shutil.which("sudo")
    return [sudo, "-n"] + list(cmd) if sudo else list(cmd)


def jetson_clocks_path() -> str:
    path = shutil.which("jetson_clocks")
    if path is None:
        raise ToolkitError("not a Jetson: jetson_clocks not found on PATH")
    return path


def clocks_locked(run: Runner = run_command, use_jtop: bool = True) -> Optional[bool]:
    """Whether jetson_clocks has pinned the clocks; None where this cannot be read (not a
    Jetson, no root and no jtop service)."""
    if shutil.which("jetson_clocks") is None and run is run_command:
        return None
    for cmd in (["jetson_clocks", "--show"], _as_root(["jetson_clocks", "--show"])):
        out = run(cmd)
        if out:
            locked = clocks_locked_from_show(parse_jetson_clocks_show(out))
            if locked is not None:
                return locked
    return _clocks_locked_from_jtop() if use_jtop and run is run_command else None


def _clocks_locked_from_jtop() -> Optional[bool]:
    """Ask the jtop service (jetson-stats; optional): it runs as root, so it knows without us."""
    try:
        from jtop import JtopException, jtop
    except ImportError:
        return None
    try:
        with jtop() as jetson:
            return bool(jetson.jetson_clocks) if jetson.ok() else None
    except JtopException as exc:  # service not running or a version mismatch: "not known"
        log.info("jtop could not tell the jetson_clocks state: %s", exc)
        return None


def _jetson_clocks(args: Sequence[str], what: str) -> None:
    cmd = _as_root([jetson_clocks_path()] + list(args))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        raise ToolkitError(f"{' '.join(cmd)} did not finish within 60 s ({what})") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise ToolkitError(f"{' '.join(cmd)} failed with status {done.returncode} ({what}): "
                           f"{said[-1] if said else 'no message'}; jetson_clocks needs root "
                           "(run as root or allow passwordless sudo for jetson_clocks)")


@contextlib.contextmanager
def locked_clocks(store_dir: Optional[str] = None) -> Iterator[Path]:
    """Pin CPU/GPU/EMC clocks at their maximum for the block, then restore what was there.

    Yields the store file (the settings before locking). Restoring runs also when the block
    raises; a failed restore after a failing block is logged and the block's error propagates.
    """
    jetson_clocks_path()  # "not a Jetson" before anything is created
    directory = Path(tempfile.mkdtemp(prefix="jetson_clocks.", dir=store_dir))
    store = directory / "l4t_dfs.conf"
    try:
        _jetson_clocks(["--store", str(store)], "storing the current clocks")
        failed = True
        try:
            _jetson_clocks([], "locking the clocks at maximum")
            yield store
            failed = False
        finally:
            try:
                _jetson_clocks(["--restore", str(store)], "restoring the clocks")
            except ToolkitError as exc:
                if not failed:
                    raise
                log.error("%s (while handling the measurement's own error)", exc)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
