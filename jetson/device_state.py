"""The state of this device as one JSON-ready dict: what a benchmark result and an engine
manifest record about where they were made.

``collect(root="/")`` reads the module (``/proc/device-tree/model``, NUL-terminated), the L4T
release (``/etc/nv_tegra_release``, else ``dpkg-query -W nvidia-l4t-core``), JetPack (the
``nvidia-jetpack`` package, else the L4T table), the power mode by name (``nvpmodel -q``, its id
looked up in ``nvpmodel -p --verbose``), whether jetson_clocks pinned the clocks, GPU and EMC
frequencies and the DLA cores under ``/sys``, the thermal zones, the CPU model and the versions
of TensorRT, CUDA, Python and numpy. On a machine that is not a Jetson every Jetson field is
None and ``is_jetson`` False; nothing raises for a missing file or tool.

``root`` points the file reads at a fake tree (tests); commands then run only through the
``run`` given (by default none at a fake root, so the real machine never leaks in).
"""
from __future__ import annotations

import json
import platform
import re
import socket
from pathlib import Path
from typing import Any, Dict, List, Optional

from jetson import clocks
from jetson.commands import Runner, no_commands, run_command

# L4T release -> JetPack release, from NVIDIA's JetPack and Jetson Linux archives
# (developer.nvidia.com/embedded/jetpack-archive, docs.nvidia.com/jetson/archives, the
# archive-7.0/7.1 pages "JetPack 7.0 with Jetson Linux 38.2/38.2.1", "JetPack 7.1 with Jetson
# Linux 38.4"). Jetson Linux security/bug-fix releases that came without a new JetPack number
# (35.6.2, 38.2.1) map to the JetPack they update. The nvidia-jetpack package, when installed,
# names the JetPack release directly and wins over this table.
L4T_TO_JETPACK = {
    # JetPack 4.6.x (Nano, TX1/TX2, Xavier)
    "32.6.1": "4.6", "32.7.1": "4.6.1", "32.7.2": "4.6.2", "32.7.3": "4.6.3", "32.7.4": "4.6.4",
    "32.7.5": "4.6.5",
    # JetPack 5.x (Xavier, Orin; Python 3.8, TensorRT 8.4/8.5)
    "34.1.0": "5.0 DP", "34.1.1": "5.0.1 DP", "35.1.0": "5.0.2",
    "35.2.1": "5.1", "35.3.1": "5.1.1", "35.4.1": "5.1.2", "35.5.0": "5.1.3",
    "35.6.0": "5.1.4", "35.6.1": "5.1.5", "35.6.2": "5.1.5",
    # JetPack 6.x (Orin; Python 3.10, TensorRT 8.6 / 10.3)
    "36.2.0": "6.0 DP", "36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2", "36.4.4": "6.2.1",
    # JetPack 7.x (Thor from 38.x; Orin again from 39.x)
    "38.2.0": "7.0", "38.2.1": "7.0", "38.4.0": "7.1", "39.2.0": "7.2",
}
# (implementer, part) from /proc/cpuinfo on Arm, where there is no "model name" line.
ARM_CPU_PARTS = {
    (0x41, 0xD07): "Cortex-A57", (0x41, 0xD42): "Cortex-A78AE", (0x41, 0xD4F): "Neoverse-V2",
    (0x41, 0xD83): "Neoverse-V3AE", (0x41, 0xD84): "Neoverse-V3", (0x4E, 0x004): "NVIDIA Carmel",
}
GPU_DEVFREQ = re.compile(r"(gpu|ga10b|gv11b|gp10b|gm20b|gb10b)", re.IGNORECASE)
OFFLINE_ZONE_MILLI_C = -200000  # Orin reads -256000 for a powered-down zone


def read_text(root: str, rel: str) -> Optional[str]:
    """``root/rel`` as text, or None when absent or unreadable (no permission, a sysfs EIO)."""
    try:
        return (Path(root) / rel.lstrip("/")).read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None


def parse_device_tree_model(raw: str) -> Optional[str]:
    """``/proc/device-tree/model`` ends in NUL: ``'NVIDIA Jetson AGX Orin Developer Kit\\0'``."""
    model = raw.split("\0", 1)[0].strip()
    return model or None


def parse_tegra_release(text: str) -> Optional[str]:
    """``# R36 (release), REVISION: 4.4, GCID: ...`` -> ``"36.4.4"``; ``REVISION: 1`` -> x.1.0."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+(?:\.\d+)*)", text)
    if not match:
        return None
    release = f"{match.group(1)}.{match.group(2)}"
    return release if release.count(".") >= 2 else release + ".0"


def parse_l4t_core_package(text: str) -> Optional[str]:
    """``dpkg-query -W nvidia-l4t-core``: ``nvidia-l4t-core\\t36.4.4-20250616085344`` -> 36.4.4."""
    match = re.search(r"nvidia-l4t-core\s+(\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else None


def parse_jetpack_package(text: str) -> Optional[str]:
    """``dpkg-query -W -f='${Version}' nvidia-jetpack``: ``6.2.1+b38`` -> ``"6.2.1"``."""
    match = re.match(r"\s*(\d+(?:\.\d+)+)", text)
    return match.group(1) if match else None


def jetpack_for_l4t(l4t: Optional[str]) -> Optional[str]:
    return L4T_TO_JETPACK.get(l4t) if l4t else None


def parse_nvpmodel_query(text: str) -> Optional[Dict[str, Any]]:
    """``nvpmodel -q``: ``NV Power Mode: MAXN\\n0`` -> ``{"name": "MAXN", "id": 0}`` (the id
    line is absent on some releases; it is looked up by name in the mode table then)."""
    lines = [line.strip() for line in text.splitlines()]
    for i, line in enumerate(lines):
        match = re.match(r"NV Power Mode:\s*(.+)$", line)
        if match:
            following = lines[i + 1] if i + 1 < len(lines) else ""
            mode_id = int(following) if following.isdigit() else None
            return {"name": match.group(1).strip(), "id": mode_id}
    return None


def parse_nvpmodel_modes(text: str) -> Dict[str, int]:
    """``nvpmodel -p --verbose``: ``POWER_MODEL: ID=2 NAME=MODE_15W`` lines -> {name: id}."""
    return {m.group(2): int(m.group(1))
            for m in re.finditer(r"POWER_MODEL:\s*ID=(\d+)\s+NAME=(\S+)", text)}


def power_mode(run: Runner) -> Optional[Dict[str, Any]]:
    """The current power mode ``{"id", "name"}``; the id comes from the mode table by name
    (ids differ between modules and releases), else from ``nvpmodel -q``."""
    out = run(["nvpmodel", "-q"])
    mode = parse_nvpmodel_query(out) if out else None
    if mode is None:
        return None
    table = run(["nvpmodel", "-p", "--verbose"])
    modes = parse_nvpmodel_modes(table) if table else {}
    if mode["name"] in modes:
        mode["id"] = modes[mode["name"]]
    return mode


def power_mode_id(name: str, run: Runner = run_command) -> Optional[int]:
    """The id of the power mode called ``name`` on this module (for ``nvpmodel -m``), or None."""
    table = run(["nvpmodel", "-p", "--verbose"])
    return parse_nvpmodel_modes(table).get(name) if table else None


def _int_file(root: str, rel: str) -> Optional[int]:
    text = read_text(root, rel)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def _freq_triplet(root: str, directory: str, cur: str, lo: str, hi: str) -> Dict[str, Any]:
    return {"current": _int_file(root, f"{directory}/{cur}"),
            "min": _int_file(root, f"{directory}/{lo}"),
            "max": _int_file(root, f"{directory}/{hi}")}


def gpu_freq_hz(root: str) -> Optional[Dict[str, Any]]:
    """GPU devfreq (cur/min/max in Hz) under /sys/class/devfreq (ga10b, gv11b, gpu-gpc-0...)."""
    base = Path(root) / "sys/class/devfreq"
    try:
        names = sorted(p.name for p in base.iterdir() if GPU_DEVFREQ.search(p.name))
    except OSError:
        return None
    for name in names:
        freq = _freq_triplet(root, f"sys/class/devfreq/{name}", "cur_freq", "min_freq",
                             "max_freq")
        if freq["current"] is not None:
            freq["device"] = name
            return freq
    return None


def emc_freq_hz(root: str) -> Optional[Dict[str, Any]]:
    """EMC (memory) clock in Hz from the BPMP debugfs (root only), else the T210 clock tree."""
    for directory, cur, lo, hi in (
            ("sys/kernel/debug/bpmp/debug/clk/emc", "rate", "min_rate", "max_rate"),
            ("sys/kernel/debug/clk/emc", "clk_rate", "clk_min_rate", "clk_max_rate")):
        freq = _freq_triplet(root, directory, cur, lo, hi)
        if freq["current"] is not None:
            return freq
    return None


def temperatures_c(root: str) -> Dict[str, float]:
    """``{zone type: °C}`` of /sys/class/thermal/thermal_zone*; offline zones left out."""
    base = Path(root) / "sys/class/thermal"
    out: Dict[str, float] = {}
    try:
        zones = sorted(base.glob("thermal_zone*"), key=lambda p: p.name)
    except OSError:
        return out
    for zone in zones:
        rel = f"sys/class/thermal/{zone.name}"
        name = read_text(root, f"{rel}/type")
        milli = _int_file(root, f"{rel}/temp")
        if name and milli is not None and milli > OFFLINE_ZONE_MILLI_C:
            out[name.strip()] = milli / 1000.0
    return out


def cpu_model(root: str) -> Optional[str]:
    """``model name`` of /proc/cpuinfo (x86), else the Arm implementer/part named."""
    text = read_text(root, "proc/cpuinfo")
    if text is None:
        return None
    fields: Dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    if fields.get("model name"):
        return fields["model name"]
    try:
        implementer = int(fields["CPU implementer"], 16)
        part = int(fields["CPU part"], 16)
    except (KeyError, ValueError):
        return fields.get("Hardware") or None
    return ARM_CPU_PARTS.get((implementer, part),
                             f"Arm implementer {implementer:#x} part {part:#05x}")


def dla_cores(root: str) -> Optional[int]:
    """Number of NVDLA engines the kernel registered (``*.nvdla0``...), None if unreadable."""
    base = Path(root) / "sys/bus/platform/devices"
    try:
        return sum(1 for p in base.iterdir() if re.search(r"\.nvdla\d+$", p.name))
    except OSError:
        return None


def dla_core_count(module: Optional[str]) -> Optional[int]:
    """DLA cores by module name: Orin Nano, Thor, Nano, TX1/TX2 have none; AGX Orin, Xavier NX
    and AGX Xavier two; Orin NX one or two (8 GB / 16 GB, not in the name): None if unknown."""
    name = (module or "").lower()
    if not name:
        return None
    if any(k in name for k in ("orin nano", "thor", "tx1", "tx2")) or \
            (re.search(r"jetson nano\b", name) and "orin" not in name):
        return 0
    if any(k in name for k in ("agx orin", "xavier")):
        return 2
    return None


def module_has_no_dla(module: Optional[str]) -> bool:
    """True for modules known to lack DLA (engines refuse --dla-core there)."""
    return dla_core_count(module) == 0


def soc_name(root: str) -> Optional[str]:
    """``nvidia,tegra234`` -> ``tegra234`` from /proc/device-tree/compatible (NUL-separated)."""
    text = read_text(root, "proc/device-tree/compatible")
    for entry in (text or "").split("\0"):
        match = re.match(r"nvidia,(tegra\d+)$", entry.strip())
        if match:
            return match.group(1)
    return None


def cuda_version(root: str, run: Runner) -> Optional[str]:
    """CUDA toolkit version: ``/usr/local/cuda/version.json`` (11.1+), ``version.txt``, else
    ``nvcc --version``."""
    text = read_text(root, "usr/local/cuda/version.json")
    if text:
        try:
            return str(json.loads(text)["cuda"]["version"])
        except (ValueError, KeyError, TypeError):
            pass  # a malformed file: fall through to the other sources
    text = read_text(root, "usr/local/cuda/version.txt")
    match = re.search(r"CUDA Version (\d+(?:\.\d+)+)", text or "")
    if match:
        return match.group(1)
    out = run(["nvcc", "--version"]) or run([str(Path(root) / "usr/local/cuda/bin/nvcc"),
                                                 "--version"])
    match = re.search(r"release [\d.]+, V(\d+(?:\.\d+)+)", out or "")
    return match.group(1) if match else None


def tensorrt_version() -> Optional[str]:
    """Version of the TensorRT bindings this interpreter imports, None when they do not load."""
    try:
        import tensorrt
    except (ImportError, OSError):  # OSError: bindings present, libnvinfer missing
        return None
    return str(tensorrt.__version__)


def numpy_version() -> Optional[str]:
    try:
        import numpy
    except ImportError:
        return None
    return str(numpy.__version__)


def jetson_identity(root: str, run: Runner) -> Dict[str, Optional[str]]:
    """module, soc, l4t, jetpack; all None when this is not a Jetson."""
    raw = read_text(root, "proc/device-tree/model") or \
        read_text(root, "sys/firmware/devicetree/base/model")
    model = parse_device_tree_model(raw) if raw else None
    release = read_text(root, "etc/nv_tegra_release")
    l4t = parse_tegra_release(release) if release else None
    if l4t is None:
        out = run(["dpkg-query", "-W", "nvidia-l4t-core"])
        l4t = parse_l4t_core_package(out) if out else None
    soc = soc_name(root)
    if l4t is None and soc is None and "jetson" not in (model or "").lower():
        return {"module": None, "soc": None, "l4t": None, "jetpack": None}
    out = run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"])
    jetpack = (parse_jetpack_package(out) if out else None) or jetpack_for_l4t(l4t)
    return {"module": model, "soc": soc, "l4t": l4t, "jetpack": jetpack}


def collect(root: str = "/", run: Optional[Runner] = None) -> Dict[str, Any]:
    """The device state (see the module docstring); JSON-serialisable, never raises for a
    missing file or tool."""
    if run is None:
        run = run_command if str(root) == "/" else no_commands
    identity = jetson_identity(root, run)
    is_jetson = any(v is not None for v in identity.values())
    state: Dict[str, Any] = {"is_jetson": is_jetson, **identity}
    jetson_fields: Dict[str, Any] = {
        "power_mode": None, "clocks_locked": None, "gpu_freq_hz": None, "emc_freq_hz": None,
        "dla_cores": None}
    if is_jetson:
        sys_dla = dla_cores(root)
        jetson_fields = {
            "power_mode": power_mode(run),
            "clocks_locked": clocks.clocks_locked(run) if run is not no_commands else None,
            "gpu_freq_hz": gpu_freq_hz(root),
            "emc_freq_hz": emc_freq_hz(root),
            "dla_cores": sys_dla if sys_dla else dla_core_count(identity["module"]),
        }
    state.update(jetson_fields)
    state.update({
        "temperatures_c": temperatures_c(root),
        "cpu_model": cpu_model(root),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "numpy": numpy_version(),
        "tensorrt": tensorrt_version(),
        "cuda": cuda_version(root, run),
    })
    return state


def jetson_info(root: str = "/", run: Optional[Runner] = None) -> Optional[Dict[str, Any]]:
    """``{"module", "l4t", "jetpack", "soc"}`` of this Jetson, or None: the shape
    engines.trt_info.jetson_info returns (so it can delegate here)."""
    if run is None:
        run = run_command if str(root) == "/" else no_commands
    identity = jetson_identity(root, run)
    return identity if any(v is not None for v in identity.values()) else None


def summary_lines(state: Dict[str, Any]) -> List[str]:
    """The versions a person setting up a device wants to see, one ``name: value`` a line."""
    mode = state.get("power_mode") or {}
    fields = [("module", state.get("module")), ("JetPack", state.get("jetpack")),
              ("L4T", state.get("l4t")), ("power mode", mode.get("name")),
              ("TensorRT", state.get("tensorrt")), ("CUDA", state.get("cuda")),
              ("Python", state.get("python")), ("numpy", state.get("numpy"))]
    return [f"{name}: {value if value is not None else 'not found'}" for name, value in fields]
