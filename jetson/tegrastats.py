"""tegrastats: a tolerant line parser, the board's power, energy over an interval, and a sampler.

tegrastats prints one line per interval; its fields differ per module and JetPack release:

- rails: ``VDD_IN 5234mW/5234mW`` (Orin Nano/NX, JetPack 5-6), ``VDD_GPU_SOC 2412mW/2412mW``
  (AGX Orin), ``POM_5V_IN 2796/2710`` (Nano, JetPack 4: no unit), ``GPU 467mW/467mW`` (AGX
  Xavier: names without ``VDD_``), ``VDD_CPU_SOC_MSS 7953mW/8332mW/8710mW`` (Thor and JetPack 7:
  current/average/peak);
- a leading ``MM-DD-YYYY HH:MM:SS`` timestamp or none; ``CPU [x%@f,...]`` or ``CPU [x%,...]@f``
  or ``off`` cores; ``GR3D_FREQ 12%@[1300,1300]``, ``GR3D_FREQ 0%@76``, ``GR3D_FREQ 37%`` or,
  on Thor, ``GR3D_FREQ @[314,314,314]`` (clocks, no load); temperatures ``cpu@52.5C`` or
  ``cpu@34.3C/34.8C`` (current/peak).

``parse_line`` keeps what it finds and leaves the rest ``None``; a line with none of RAM, a
rail or the GPU field is refused. Energy is a trapezoid over the samples' times
(``energy_j``, a pure function). ``TegrastatsSampler`` runs ``tegrastats --interval N`` in a
subprocess around a measurement and refuses cleanly where there is no tegrastats.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import statistics
import subprocess
import threading
import time
from datetime import datetime
from typing import Any, Dict, List, Optional, Sequence, Tuple

from common.errors import ToolkitError

log = logging.getLogger(__name__)

_NUM = r"\d+(?:\.\d+)?"
_TIMESTAMP = re.compile(r"^\s*(\d{2})-(\d{2})-(\d{4}) (\d{2}):(\d{2}):(\d{2})\b")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\](?:@(\d+))?")
_CORE = re.compile(r"^(\d+)%(?:@(\d+))?$")
_GR3D = re.compile(r"\bGR3D_FREQ (?:(\d+)%)?(?:@\[?([\d,]+)\]?)?")
_EMC = re.compile(r"\bEMC_FREQ (\d+)%(?:@(\d+))?")
# NAME value[mW]/value[mW][/value[mW]], NAME preceded by a space or the line start. RAM/SWAP
# ("3645/7620MB") and IRAM ("0/252kB") never match: the value must end at a space or the end.
_RAIL = re.compile(
    rf"(?:^|(?<=\s))([A-Z][A-Z0-9_]*) ({_NUM})(?:mW)?/({_NUM})(?:mW)?(?:/({_NUM})(?:mW)?)?(?=\s|$)")
_TEMP = re.compile(rf"(?:^|(?<=\s))([A-Za-z][\w-]*)@(-?{_NUM})C(?:/(-?{_NUM})C)?(?=\s|$)")
OFFLINE_SENSOR_C = -200.0  # Orin reports a powered-down zone as -256C: not a temperature

# Rails that measure the whole module's (or board's) input, most specific first.
INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN")
# Modules without an input rail in tegrastats: the module's power is the sum of its rails.
MODULE_RAIL_SETS = (
    ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"),  # AGX Orin (VIN_SYS_5V0 is only the 5 V rail)
    ("VDD_GPU", "VDD_CPU_SOC_MSS", "VIN_SYS_5V0"),  # Thor
    ("GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"),  # AGX Xavier
)
OPTIONAL_MODULE_RAILS = ("VDDQ_VDD2_1V8AO",)  # AGX Orin 64GB: added to the sum when printed


@dataclasses.dataclass
class TegrastatsSample:
    """One tegrastats line. Absent fields are None (lists/dicts empty)."""

    timestamp: Optional[datetime] = None  # the line's own clock (1 s resolution)
    received_s: Optional[float] = None  # time.monotonic() when the sampler read the line
    ram_used_mb: Optional[int] = None
    ram_total_mb: Optional[int] = None
    swap_used_mb: Optional[int] = None
    swap_total_mb: Optional[int] = None
    cpu_load_pct: List[Optional[float]] = dataclasses.field(default_factory=list)  # None: off
    cpu_freq_mhz: List[Optional[int]] = dataclasses.field(default_factory=list)
    gpu_load_pct: Optional[float] = None  # GR3D_FREQ; None on Thor (clocks only)
    gpu_freq_mhz: List[int] = dataclasses.field(default_factory=list)  # one per GPC
    emc_load_pct: Optional[float] = None
    emc_freq_mhz: Optional[int] = None
    temperatures_c: Dict[str, float] = dataclasses.field(default_factory=dict)
    rails_mw: Dict[str, float] = dataclasses.field(default_factory=dict)  # instantaneous
    rails_avg_mw: Dict[str, float] = dataclasses.field(default_factory=dict)  # tegrastats' mean
    rails_peak_mw: Dict[str, float] = dataclasses.field(default_factory=dict)  # 3rd value

    def to_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out["timestamp"] = self.timestamp.isoformat() if self.timestamp else None
        return out


def parse_line(line: str) -> TegrastatsSample:
    """Parse one tegrastats line of any supported format (see the module docstring)."""
    sample = TegrastatsSample()
    match = _TIMESTAMP.match(line)
    if match:
        month, day, year, hour, minute, second = (int(g) for g in match.groups())
        sample.timestamp = datetime(year, month, day, hour, minute, second)
    match = _RAM.search(line)
    if match:
        sample.ram_used_mb, sample.ram_total_mb = int(match.group(1)), int(match.group(2))
    match = _SWAP.search(line)
    if match:
        sample.swap_used_mb, sample.swap_total_mb = int(match.group(1)), int(match.group(2))
    match = _CPU.search(line)
    if match:
        sample.cpu_load_pct, sample.cpu_freq_mhz = _parse_cores(match.group(1), match.group(2))
    gr3d = _GR3D.search(line)
    if gr3d and (gr3d.group(1) or gr3d.group(2)):
        sample.gpu_load_pct = float(gr3d.group(1)) if gr3d.group(1) else None
        sample.gpu_freq_mhz = [int(f) for f in (gr3d.group(2) or "").split(",") if f]
    match = _EMC.search(line)
    if match:
        sample.emc_load_pct = float(match.group(1))
        sample.emc_freq_mhz = int(match.group(2)) if match.group(2) else None
    for name, value, _peak in _TEMP.findall(line):
        if float(value) > OFFLINE_SENSOR_C:
            sample.temperatures_c[name] = float(value)
    for name, current, average, peak in _RAIL.findall(line):
        sample.rails_mw[name] = float(current)
        sample.rails_avg_mw[name] = float(average)
        if peak:
            sample.rails_peak_mw[name] = float(peak)
    if sample.ram_used_mb is None and not sample.rails_mw and not (gr3d and gr3d.group(0)):
        raise ToolkitError(f"not a tegrastats line (no RAM, rail or GR3D_FREQ field): "
                           f"{line.strip()[:80]!r}")
    return sample


def _parse_cores(cores: str, shared_freq: Optional[str]) -> Tuple[list, list]:
    """``12%@1420,off`` or ``12%,3%`` + ``@1420`` -> ([12.0, None], [1420, None])."""
    loads: List[Optional[float]] = []
    freqs: List[Optional[int]] = []
    for core in (c.strip() for c in cores.split(",")):
        match = _CORE.match(core)
        if not match:  # "off" (powered down) or an empty slot
            loads.append(None)
            freqs.append(None)
            continue
        loads.append(float(match.group(1)))
        freq = match.group(2) or shared_freq
        freqs.append(int(freq) if freq else None)
    return loads, freqs


def board_power_source(sample: TegrastatsSample) -> Optional[Tuple[str, ...]]:
    """The rails whose sum is the module's input power in this sample, or None.

    An input rail (VDD_IN, POM_5V_IN, VIN) wins. Without one (AGX Orin, Thor, AGX Xavier) the
    module's rails are summed: VIN_SYS_5V0 alone is only the 5 V system rail there.
    """
    for rail in INPUT_RAILS:
        if rail in sample.rails_mw:
            return (rail,)
    for rails in MODULE_RAIL_SETS:
        if all(r in sample.rails_mw for r in rails):
            extra = tuple(r for r in OPTIONAL_MODULE_RAILS if r in sample.rails_mw)
            return rails + extra
    return None


def board_power_mw(sample: TegrastatsSample) -> Optional[float]:
    """Instantaneous module input power (mW), or None when no known rail set is present."""
    rails = board_power_source(sample)
    return None if rails is None else sum(sample.rails_mw[r] for r in rails)


def power_mw(sample: TegrastatsSample, rail: Optional[str] = None) -> Optional[float]:
    """One rail's instantaneous power, or the board's (rail=None)."""
    return board_power_mw(sample) if rail is None else sample.rails_mw.get(rail)


def energy_j(times_s: Sequence[float], power_mw_values: Sequence[float]) -> float:
    """Energy in joules: the trapezoid rule over (time in s, power in mW) points."""
    if len(times_s) != len(power_mw_values):
        raise ToolkitError(f"energy: {len(times_s)} times but {len(power_mw_values)} powers")
    if len(times_s) < 2:
        raise ToolkitError(f"energy needs at least 2 samples, got {len(times_s)}: measure "
                           "longer or sample tegrastats more often (--interval)")
    total = 0.0
    for i in range(1, len(times_s)):
        dt = times_s[i] - times_s[i - 1]
        if dt < 0:
            raise ToolkitError(f"energy: sample times go backwards at index {i} "
                               f"({times_s[i - 1]} -> {times_s[i]})")
        total += 0.5 * (power_mw_values[i] + power_mw_values[i - 1]) * dt
    return total / 1000.0


def sample_times(samples: Sequence[TegrastatsSample],
                 interval_ms: Optional[float] = None) -> Optional[List[float]]:
    """Seconds of each sample, relative to the first: the sampler's receive times when every
    sample has one and they are spread out, else ``i * interval``, else the lines' own
    timestamps (1 s resolution), else None.

    Receive times bunched together mean tegrastats' output arrived buffered; then they say
    nothing about when each line was measured and the interval is used instead.
    """
    received = [s.received_s for s in samples]
    if samples and all(r is not None for r in received):
        gaps = [b - a for a, b in zip(received, received[1:])]
        spread = not gaps or interval_ms is None or \
            statistics.median(gaps) >= 0.5 * interval_ms / 1000.0
        if spread:
            return [r - received[0] for r in received]  # type: ignore[operator]
    if interval_ms is not None:
        return [i * interval_ms / 1000.0 for i in range(len(samples))]
    stamps = [s.timestamp for s in samples]
    if samples and all(t is not None for t in stamps):
        return [(t - stamps[0]).total_seconds() for t in stamps]  # type: ignore[operator]
    return None


def rail_stats(samples: Sequence[TegrastatsSample]) -> Dict[str, Dict[str, float]]:
    """Per rail: mean/min/max of the instantaneous mW and how many samples had it."""
    values: Dict[str, List[float]] = {}
    for s in samples:
        for rail, mw in s.rails_mw.items():
            values.setdefault(rail, []).append(mw)
    return {rail: {"mean_mw": statistics.fmean(v), "min_mw": min(v), "max_mw": max(v),
                   "samples": len(v)}
            for rail, v in sorted(values.items())}


def summarise_samples(samples: Sequence[TegrastatsSample],
                      interval_ms: Optional[float] = None) -> Dict[str, Any]:
    """JSON-ready summary: board power (rails used, mean/max mW, energy J), per-rail stats, GPU
    and EMC load, peak temperatures and RAM. Fields that cannot be computed are None."""
    times = sample_times(samples, interval_ms)
    board = [board_power_mw(s) for s in samples]
    have_board = bool(samples) and all(p is not None for p in board)
    sources = {board_power_source(s) for s in samples}
    energy = None
    if have_board and times is not None and len(samples) >= 2:
        energy = energy_j(times, board)  # type: ignore[arg-type]
    gpu = [s.gpu_load_pct for s in samples if s.gpu_load_pct is not None]
    emc = [s.emc_load_pct for s in samples if s.emc_load_pct is not None]
    temps: Dict[str, float] = {}
    for s in samples:
        for zone, c in s.temperatures_c.items():
            temps[zone] = max(c, temps.get(zone, c))
    ram = [s.ram_used_mb for s in samples if s.ram_used_mb is not None]
    return {
        "samples": len(samples),
        "duration_s": times[-1] if times else None,
        "board_power": {
            "rails": list(sources.pop()) if have_board and len(sources) == 1 else None,
            "mean_mw": _mean(board) if have_board else None,
            "max_mw": max(board) if have_board else None,  # type: ignore[type-var]
            "energy_j": energy,
        },
        "rails": rail_stats(samples),
        "gpu_load_pct": {"mean": _mean(gpu), "max": max(gpu)} if gpu else None,
        "emc_load_pct": {"mean": _mean(emc), "max": max(emc)} if emc else None,
        "temperatures_max_c": temps,
        "ram_used_max_mb": max(ram) if ram else None,
    }


def _mean(values: Sequence[Any]) -> float:
    return float(sum(values)) / len(values)


class TegrastatsSampler:
    """``with TegrastatsSampler(100) as ts: run()``, then ``ts.samples``, ``ts.energy_j()``.

    Starts ``tegrastats --interval N`` (line-buffered through ``stdbuf`` where it exists, so
    each line's receive time is when it was printed), reads its lines in a thread and stops it
    on exit, also when the block raises. Raises ToolkitError "not a Jetson" where tegrastats is
    not installed, and when tegrastats exits on its own with an error.
    """

    def __init__(self, interval_ms: int = 100, executable: str = "tegrastats"):
        if interval_ms < 1:
            raise ToolkitError(f"tegrastats interval {interval_ms} ms: expected >= 1")
        self.interval_ms = int(interval_ms)
        self.executable = executable
        self.samples: List[TegrastatsSample] = []
        self.unparsed_lines = 0
        self._proc: Optional[subprocess.Popen] = None
        self._thread: Optional[threading.Thread] = None

    def command(self) -> List[str]:
        path = shutil.which(self.executable)
        if path is None:
            raise ToolkitError(f"not a Jetson: {self.executable} not found on PATH")
        cmd = [path, "--interval", str(self.interval_ms)]
        stdbuf = shutil.which("stdbuf")
        return [stdbuf, "-oL"] + cmd if stdbuf else cmd

    def __enter__(self) -> TegrastatsSampler:
        cmd = self.command()
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, bufsize=1)
        self._thread = threading.Thread(target=self._read, name="tegrastats", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            received = time.monotonic()
            if not line.strip():
                continue
            try:
                sample = parse_line(line)
            except ToolkitError:
                self.unparsed_lines += 1
                continue
            sample.received_s = received
            self.samples.append(sample)  # list.append is atomic: no lock needed

    def __exit__(self, exc_type, exc, tb) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        exited_by_itself = proc.poll() is not None
        if not exited_by_itself:
            proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)
        stderr = proc.stderr.read().strip() if proc.stderr else ""
        if exited_by_itself and proc.returncode != 0 and exc_type is None:
            raise ToolkitError(f"tegrastats exited with status {proc.returncode}: "
                               f"{stderr.splitlines()[-1] if stderr else 'no message'}")
        if self.unparsed_lines:
            log.warning("tegrastats: %d lines were not tegrastats samples", self.unparsed_lines)

    def times_s(self) -> Optional[List[float]]:
        return sample_times(self.samples, self.interval_ms)

    def mean_power_mw(self, rail: Optional[str] = None) -> float:
        values = self._powers(rail)
        return _mean(values)

    def energy_j(self, rail: Optional[str] = None) -> float:
        values = self._powers(rail)
        return energy_j(self.times_s() or [], values)  # times exist: the interval is known

    def rail_stats(self) -> Dict[str, Dict[str, float]]:
        return rail_stats(self.samples)

    def summary(self) -> Dict[str, Any]:
        return summarise_samples(self.samples, self.interval_ms)

    def _powers(self, rail: Optional[str]) -> List[float]:
        if not self.samples:
            raise ToolkitError(f"no tegrastats samples: the measurement was shorter than the "
                               f"{self.interval_ms} ms interval")
        values = [power_mw(s, rail) for s in self.samples]
        if any(v is None for v in values):
            what = f"rail {rail}" if rail else "a board input rail (VDD_IN, POM_5V_IN, ...)"
            seen = sorted(self.samples[0].rails_mw)
            raise ToolkitError(f"tegrastats samples lack {what}; rails seen: {seen}")
        return values  # type: ignore[return-value]
