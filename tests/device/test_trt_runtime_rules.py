"""Issue 21, runtime side, without a GPU: a DLA plan's core is given to the TensorRT runtime
before the plan is deserialized, and a session opened in a thread where pycuda has no current
CUDA context is refused in one line.

The stand-ins below record the order of OUR calls (what is tested); none pretends TensorRT or
CUDA did real work: deserialization answers with a marker object, the context checks answer
what pycuda answers in that situation (no current context: ``Context.get_current()`` is None
and ``Context.get_device()`` raises its LogicError, from ``cuCtxGetDevice``)."""
from __future__ import annotations

import threading

import pytest

from common.errors import ToolkitError
from runtime import trt_backend
from runtime.buffers import current_cuda_device
from runtime.trt_backend import manifest_dla_core


class _RecordingRuntime:
    """Writes down, in order, the DLA core it is given and the deserialization."""

    events: list = []

    def __init__(self, logger):
        self._core = 0

    @property
    def DLA_core(self):  # noqa: N802 (TensorRT's property name)
        return self._core

    @DLA_core.setter
    def DLA_core(self, core):  # noqa: N802
        self._core = core
        self.events.append(("DLA_core", core))

    def deserialize_cuda_engine(self, data):
        self.events.append(("deserialize", len(data)))
        return "engine"


class _FakeTrt:
    __version__ = "10.3.0.30"
    Runtime = _RecordingRuntime

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            pass


@pytest.fixture
def plan(tmp_path):
    path = tmp_path / "m.plan"
    path.write_bytes(b"\0" * 128)
    return path


def test_dla_core_is_set_before_the_plan_is_deserialized(plan):
    _RecordingRuntime.events = []
    runtime, engine = trt_backend._deserialize(_FakeTrt, plan, dla_core=1)
    assert engine == "engine" and runtime.DLA_core == 1
    assert _RecordingRuntime.events == [("DLA_core", 1), ("deserialize", 128)]


def test_gpu_plan_leaves_the_runtime_core_alone(plan):
    _RecordingRuntime.events = []
    trt_backend._deserialize(_FakeTrt, plan, dla_core=None)
    assert _RecordingRuntime.events == [("deserialize", 128)]


@pytest.mark.parametrize("manifest, core", [
    ({"build_options": {"dla_core": 1}}, 1), ({"build_options": {"dla_core": None}}, None),
    ({"build_options": {}}, None), ({}, None),
])
def test_the_dla_core_comes_from_the_manifest_build_options(manifest, core):
    assert manifest_dla_core(manifest) == core


class _LogicError(Exception):
    """pycuda.driver.LogicError's role: what cuCtxGetDevice raises without a context."""


def _pycuda(current):
    class Context:
        @staticmethod
        def get_current():
            return current

        @staticmethod
        def get_device():
            if current is None:
                raise _LogicError("cuCtxGetDevice failed: invalid device context")
            return "device 0"

    return type("driver", (), {"Context": Context, "LogicError": _LogicError})


def test_session_in_a_thread_without_a_cuda_context_is_one_line():
    errors = []

    def open_in_thread():
        try:
            current_cuda_device(_pycuda(None), "cannot run engine m.plan")
        except ToolkitError as exc:
            errors.append(str(exc))

    worker = threading.Thread(target=open_in_thread, name="server-worker")
    worker.start()
    worker.join()
    (message,) = errors
    assert "\n" not in message and message.startswith("cannot run engine m.plan: no CUDA context")
    assert "'server-worker'" in message and "retain_primary_context().push()" in message


def test_logic_error_from_get_device_becomes_the_same_line():
    class Stale:  # a context object is current, but the driver says it is not usable
        pass

    driver = _pycuda(Stale())

    def fail():
        raise _LogicError("cuCtxGetDevice failed: invalid device context")

    driver.Context.get_device = staticmethod(fail)
    with pytest.raises(ToolkitError) as info:
        current_cuda_device(driver, "cannot run engine m.plan")
    assert "no CUDA context is current" in str(info.value)
    assert "(cuCtxGetDevice failed: invalid device context)" in str(info.value)


def test_current_context_gives_its_device():
    assert current_cuda_device(_pycuda(object()), "x") == "device 0"
