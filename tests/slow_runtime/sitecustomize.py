"""Test-only: slows ``runtime.ort_backend.OrtSession.run`` from outside the project, so the
regression check can be shown to fail on a real slowdown (tests/device/test_regress_baseline.py).

Put this folder on PYTHONPATH and set ``TOOLKIT_SLOW_RUN=<fraction>``: every run then copies
its bound input arrays (the extra work a careless change would add) and keeps the core busy for
``fraction`` times the run's own time, so the slowdown is the same share on any machine. Python
imports ``sitecustomize`` at start-up, before the project is on ``sys.path``; the patch is
applied when ``runtime.ort_backend`` is first imported (a meta path finder). Without the
variable nothing is installed.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import time

MODULE = "runtime.ort_backend"


def _slowed(run, fraction: float):
    def slow_run(self, bindings, *args, **kwargs):
        start = time.perf_counter()
        for name, spec in self.inputs.items():  # an extra copy of every bound input
            if name in bindings:
                bindings[name].view(spec.dtype).copy()
        out = run(self, bindings, *args, **kwargs)
        until = time.perf_counter() + fraction * (time.perf_counter() - start)
        while time.perf_counter() < until:  # busy, like real work (sleep is coarse below 1 ms)
            pass
        return out

    slow_run.__wrapped__ = run
    return slow_run


class _PatchOnImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, fraction: float):
        self.fraction = fraction
        self.spec = None

    def find_spec(self, name, path=None, target=None):
        if name != MODULE:
            return None
        sys.meta_path.remove(self)  # find the real module, patch it once
        self.spec = importlib.machinery.PathFinder.find_spec(name, path)
        if self.spec is None:
            return None
        self.real_loader = self.spec.loader
        self.spec.loader = self
        return self.spec

    def create_module(self, spec):
        return self.real_loader.create_module(spec)

    def exec_module(self, module):
        self.real_loader.exec_module(module)
        module.OrtSession.run = _slowed(module.OrtSession.run, self.fraction)
        sys.stderr.write(f"tests/slow_runtime: OrtSession.run slowed by {self.fraction:.0%}\n")


_fraction = os.environ.get("TOOLKIT_SLOW_RUN")
if _fraction:
    sys.meta_path.insert(0, _PatchOnImport(float(_fraction)))
