"""The one place the jetson helpers run a command: tests call the parsers on captured output
instead, or pass a replacement runner that replays captured output."""
from __future__ import annotations

import subprocess
from typing import Callable, Optional, Sequence

Runner = Callable[[Sequence[str]], Optional[str]]


def run_command(cmd: Sequence[str], timeout: float = 10.0) -> Optional[str]:
    """stdout of ``cmd``, or None when it is not installed, fails or hangs (probes are optional:
    a missing tool means "not known here", never an error)."""
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def no_commands(cmd: Sequence[str]) -> Optional[str]:
    """Runner for a fake filesystem root: nothing of the real machine leaks into its state."""
    return None
