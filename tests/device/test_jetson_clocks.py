"""jetson_clocks: --show parsing on captured output, the locked/unlocked rule, and the
store -> lock -> restore order around a block (with a recording stand-in for the tool)."""
# ruff: noqa: E501  (the captured jetson_clocks lines are kept whole)
from __future__ import annotations

import os
import shutil
import stat
import sys
import textwrap

import pytest

from common.errors import ToolkitError
from jetson import clocks

# `jetson_clocks --show` of a TX2, from rbonghi/jetson_stats tests/jetson_clocks (default clocks).
SHOW_TX2 = """\
SOC family:tegra186  Machine:quill
Online CPUs: 0,3-5
CPU Cluster Switching: Disabled
cpu0: Online=1 Governor=schedutil MinFreq=345600 MaxFreq=2035200 CurrentFreq=2035200 IdleStates: C1=1 c7=1
cpu1: Online=0 Governor=schedutil MinFreq=345600 MaxFreq=2035200 CurrentFreq=1113600 IdleStates: C1=1 c6=1 c7=1
cpu3: Online=1 Governor=schedutil MinFreq=345600 MaxFreq=2035200 CurrentFreq=1881600 IdleStates: C1=1 c7=1
GPU MinFreq=114750000 MaxFreq=1134750000 CurrentFreq=114750000
EMC MinFreq=40800000 MaxFreq=1600000000 CurrentFreq=1600000000 FreqOverride=0
Fan: speed=0
NV Power Mode: MAXP_CORE_ARM
"""
# The same emulator's output after jetson_clocks ran (EMC minimum untouched, as on a device).
SHOW_LOCKED = """\
SOC family:TEST  Machine:TEST
cpu0: Online=1 Governor=schedutil MinFreq=1428000 MaxFreq=1428000 CurrentFreq=1428000 IdleStates: WFI=1
cpu1: Online=1 Governor=schedutil MinFreq=1428000 MaxFreq=1428000 CurrentFreq=1428000 IdleStates: WFI=1 c7=1
GPU MinFreq=921600000 MaxFreq=921600000 CurrentFreq=921600000
EMC MinFreq=204000000 MaxFreq=1600000000 CurrentFreq=1600000000 FreqOverride=0
Fan: speed=255
NV Power Mode: MAXTEST
"""


def test_parse_show():
    show = clocks.parse_jetson_clocks_show(SHOW_TX2)
    assert show["cpus"][1] == {"online": False, "min": 345600, "max": 2035200, "current": 1113600}
    assert show["gpu"] == {"min": 114750000, "max": 1134750000, "current": 114750000}
    assert show["emc"]["current"] == 1600000000 and show["power_mode"] == "MAXP_CORE_ARM"


def test_locked_rule():
    assert clocks.clocks_locked_from_show(clocks.parse_jetson_clocks_show(SHOW_TX2)) is False
    assert clocks.clocks_locked_from_show(clocks.parse_jetson_clocks_show(SHOW_LOCKED)) is True
    assert clocks.clocks_locked_from_show(clocks.parse_jetson_clocks_show("Please run as root")) \
        is None


def test_clocks_locked_with_replayed_output():
    assert clocks.clocks_locked(lambda cmd: SHOW_LOCKED) is True
    assert clocks.clocks_locked(lambda cmd: None) is None  # no root, no tool: unknown


@pytest.mark.skipif(shutil.which("jetson_clocks") is not None, reason="this is a Jetson")
def test_not_a_jetson():
    assert clocks.clocks_locked() is None
    with pytest.raises(ToolkitError, match="not a Jetson: jetson_clocks not found"):
        with clocks.locked_clocks():
            pass  # pragma: no cover


@pytest.fixture
def recording_jetson_clocks(tmp_path, monkeypatch):
    """A jetson_clocks stand-in on PATH that logs its arguments (and fails when asked): it
    checks the order of our calls, not what the real tool does to the clocks."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.log"
    tool = bindir / "jetson_clocks"
    tool.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import os, sys
        with open({str(log)!r}, "a") as f:
            f.write(" ".join(sys.argv[1:]) + "\\n")
        if "--store" in sys.argv:
            open(sys.argv[-1], "w").write("stored\\n")
        fail = os.environ.get("FAIL_ON")
        if (fail == "store" and "--store" in sys.argv) or (fail == "lock" and len(sys.argv) == 1):
            print("Error: Run this script as a root user", file=sys.stderr)
            sys.exit(1)
        """))
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(clocks, "_as_root", list)  # root or not, call the tool itself

    def calls():
        return [line.split(" ")[0] for line in log.read_text().splitlines()] \
            if log.exists() else []

    return calls


def test_store_lock_restore_order(recording_jetson_clocks):
    with clocks.locked_clocks() as store:
        assert store.read_text() == "stored\n"
        assert recording_jetson_clocks() == ["--store", ""]
    assert recording_jetson_clocks() == ["--store", "", "--restore"]
    assert not store.exists()  # the temporary store is removed


def test_restore_runs_when_the_block_raises(recording_jetson_clocks):
    with pytest.raises(ValueError, match="benchmark broke"):
        with clocks.locked_clocks():
            raise ValueError("benchmark broke")
    assert recording_jetson_clocks() == ["--store", "", "--restore"]


def test_failed_lock_is_restored_and_reported(recording_jetson_clocks, monkeypatch):
    monkeypatch.setenv("FAIL_ON", "lock")
    with pytest.raises(ToolkitError, match="locking the clocks at maximum.*needs root"):
        with clocks.locked_clocks():
            pytest.fail("the block must not run")  # pragma: no cover
    assert recording_jetson_clocks() == ["--store", "", "--restore"]


def test_failed_store_runs_nothing_else(recording_jetson_clocks, monkeypatch):
    monkeypatch.setenv("FAIL_ON", "store")
    with pytest.raises(ToolkitError, match="storing the current clocks.*Run this script"):
        with clocks.locked_clocks():
            pytest.fail("the block must not run")  # pragma: no cover
    assert recording_jetson_clocks() == ["--store"]


@pytest.mark.jetson
@pytest.mark.skipif(shutil.which("jetson_clocks") is None, reason="needs jetson_clocks (a Jetson)")
@pytest.mark.skipif(os.geteuid() != 0, reason="jetson_clocks --show needs root")
def test_real_show_reads_a_state_as_root():
    assert isinstance(clocks.clocks_locked(use_jtop=False), bool)
