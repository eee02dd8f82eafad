"""Which machine a CPU figure was measured on: a fingerprint that tells apart two hosts with
the same CPU name, so a CPU baseline is only ever compared on the machine that recorded it.

Recipe (``facts`` -> ``fingerprint``, 12 hex digits of a SHA-256 over the keyed facts):

- ``identity``: ``machine-id:<16 hex of a salted SHA-256 of /etc/machine-id>`` (else of
  ``/var/lib/dbus/machine-id``) when readable: systemd writes it once at install, it survives
  reboots and kernel updates, and two installs differ even on identical hardware. A VM or
  container image cloned with its machine-id counts as the same host (the id cannot tell them
  apart; the hardware facts below still do when the clone got other cores or memory). The id
  itself is never stored. Without a readable id: ``hostname:<name> kernel:<release>``
  (boot-independent facts that two same-named containers rarely share).
- ``cpu_model``: /proc/cpuinfo's model name (or ``platform.processor()``).
- ``cores``: CPUs this process may run on (``sched_getaffinity``; a container limited to 2
  cores of a 64-core host is another machine for latency).
- ``memory_gib``: MemTotal rounded to whole GiB (the exact figure moves by a few MiB with the
  kernel's reservations).

Standard library only (device side, Python 3.8).
"""
from __future__ import annotations

import hashlib
import os
import platform
import socket
from pathlib import Path
from typing import Dict, Optional

MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
SALT = "jetson-transformer-toolkit baseline"
KEYED = ("identity", "cpu_model", "cores", "memory_gib")


def _read(path: str) -> Optional[str]:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return text or None


def machine_id_hash(files=MACHINE_ID_FILES) -> Optional[str]:
    for path in files:
        text = _read(path)
        if text:
            # salted and cut, as systemd asks of ids derived from it (machine-id(5))
            return hashlib.sha256(f"{SALT}:{text}".encode()).hexdigest()[:16]
    return None


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    for line in (_read(cpuinfo) or "").splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 0


def memory_gib(meminfo: str = "/proc/meminfo") -> Optional[int]:
    for line in (_read(meminfo) or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(round(int(line.split()[1]) / (1024 * 1024)))
    return None


def facts(machine_id_files=MACHINE_ID_FILES) -> Dict[str, object]:
    """The keyed facts of this machine (plus the kernel, recorded but keyed only without a
    machine-id)."""
    mid = machine_id_hash(machine_id_files)
    kernel = platform.release()
    identity = f"machine-id:{mid}" if mid else f"hostname:{socket.gethostname()} kernel:{kernel}"
    return {"identity": identity, "cpu_model": cpu_model(), "cores": usable_cores(),
            "memory_gib": memory_gib(), "kernel": kernel,
            "identity_source": "machine-id" if mid else "hostname"}


def fingerprint(keyed: Dict[str, object]) -> str:
    """12 hex digits over the keyed facts: stable across calls and reboots, different when any
    keyed fact differs."""
    text = "\n".join(f"{k}={keyed.get(k)}" for k in KEYED)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def describe() -> Dict[str, object]:
    """What a suite report stores under ``state.host``: the facts and their fingerprint."""
    found = facts()
    return {**found, "fingerprint": fingerprint(found)}
