"""Device state on fake filesystem trees (a Jetson's files written into tmp_path) and on this
machine; the command parsers on captured nvpmodel/dpkg-query/nvcc output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jetson import device_state as ds

ROOT = Path(__file__).resolve().parents[2]

# /etc/nv_tegra_release of L4T 36.4.4 and `dpkg-query --show nvidia-l4t-core` of L4T 38.4.0, as
# quoted in lesomnus/tegra-exporter stats/parse_test.go.
R36_RELEASE = ("# R36 (release), REVISION: 4.4, GCID: 41062509, BOARD: generic, EABI: aarch64, "
               "DATE: Mon Jun 16 16:07:13 UTC 2025\n")
L4T_CORE_38 = "nvidia-l4t-core\t38.4.0-20251230160601\n"
# Thor's release file, from rbonghi/jetson_stats issue #711.
R38_RELEASE = ("# R38 (release), REVISION: 2.0, GCID: 41844464, BOARD: generic, EABI: aarch64, "
               "DATE: Fri Aug 22 00:55:42 UTC 2025\n")
# `nvpmodel -p --verbose` mode table lines in the form rbonghi/jetson_stats tests/nvpmodel
# emulates (AGX Xavier), and `nvpmodel -q` with the warning line it can print first.
NVPMODEL_TABLE = """NVPM VERB: PM_CONFIG: DEFAULT=MODE_15W(2)
NVPM VERB: PARAM TYPE=CLOCK NAME=GPU
NVPM VERB: POWER_MODEL: ID=0 NAME=MAXN
NVPM VERB: CPU_ONLINE CORE_0 1
NVPM VERB: POWER_MODEL: ID=1 NAME=MODE_10W
NVPM VERB: POWER_MODEL: ID=2 NAME=MODE_15W
NVPM VERB: GPU MAX_FREQ 670000000
NVPM VERB: POWER_MODEL: ID=3 NAME=MODE_30W_ALL
"""
NVPMODEL_QUERY = "NVPM WARN: patching tpc_pg_mask: (0x1:0x4)\nNV Power Mode: MODE_15W\n2\n"
CPUINFO_ORIN = ("processor\t: 0\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd\n"
                "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x1\n"
                "CPU part\t: 0xd42\nCPU revision\t: 1\n\nprocessor\t: 1\nCPU implementer\t: 0x41\n")
CPUINFO_X86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"


def write(root: Path, rel: str, data) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def fake_orin(root: Path) -> Path:
    write(root, "proc/device-tree/model", b"NVIDIA Jetson AGX Orin Developer Kit\0")
    write(root, "proc/device-tree/compatible", b"nvidia,p3737-0000+p3701-0005\0nvidia,p3701-0005"
          b"\0nvidia,tegra234\0")
    write(root, "etc/nv_tegra_release", R36_RELEASE)
    gpu = "sys/class/devfreq/17000000.gpu"
    for name, hz in (("cur_freq", "306000000"), ("min_freq", "306000000"),
                     ("max_freq", "1300500000")):
        write(root, f"{gpu}/{name}", hz + "\n")
    write(root, "sys/class/devfreq/15340000.vic/cur_freq", "115200000\n")  # not the GPU
    emc = "sys/kernel/debug/bpmp/debug/clk/emc"
    for name, hz in (("rate", "3199000000"), ("min_rate", "204000000"),
                     ("max_rate", "3199000000")):
        write(root, f"{emc}/{name}", hz + "\n")
    for i, (zone, milli) in enumerate((("cpu-thermal", "52343"), ("gpu-thermal", "-256000"),
                                       ("tj-thermal", "52500"))):
        write(root, f"sys/class/thermal/thermal_zone{i}/type", zone + "\n")
        write(root, f"sys/class/thermal/thermal_zone{i}/temp", milli + "\n")
    for dla in ("15880000.nvdla0", "158c0000.nvdla1"):
        (root / "sys/bus/platform/devices" / dla).mkdir(parents=True)
    write(root, "proc/cpuinfo", CPUINFO_ORIN)
    write(root, "usr/local/cuda/version.json", json.dumps(
        {"cuda": {"name": "CUDA SDK", "version": "12.6.68"}}))
    return root


def replay(outputs):
    """A command runner answering with captured output (None: the tool is absent)."""
    calls = []

    def run(cmd):
        calls.append(list(cmd))
        return outputs.get(tuple(cmd))

    run.calls = calls
    return run


ORIN_COMMANDS = {("nvpmodel", "-q"): NVPMODEL_QUERY,
                 ("nvpmodel", "-p", "--verbose"): NVPMODEL_TABLE}


def test_fake_agx_orin_tree(tmp_path):
    state = ds.collect(str(fake_orin(tmp_path)), run=replay(ORIN_COMMANDS))
    json.dumps(state)  # JSON-serialisable as it is
    assert state["is_jetson"] is True
    assert state["module"] == "NVIDIA Jetson AGX Orin Developer Kit"  # the NUL is gone
    assert (state["soc"], state["l4t"], state["jetpack"]) == ("tegra234", "36.4.4", "6.2.1")
    assert state["power_mode"] == {"name": "MODE_15W", "id": 2}
    assert state["gpu_freq_hz"] == {"current": 306000000, "min": 306000000, "max": 1300500000,
                                    "device": "17000000.gpu"}
    assert state["emc_freq_hz"] == {"current": 3199000000, "min": 204000000, "max": 3199000000}
    assert state["temperatures_c"] == {"cpu-thermal": 52.343, "tj-thermal": 52.5}  # gpu offline
    assert state["dla_cores"] == 2
    assert state["cpu_model"] == "Cortex-A78AE"
    assert state["cuda"] == "12.6.68"
    assert state["clocks_locked"] is None  # jetson_clocks --show gave nothing (no root here)


def test_jetpack_package_wins_over_the_l4t_table(tmp_path):
    commands = dict(ORIN_COMMANDS)
    commands[("dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack")] = "6.2.1+b38"
    tree = fake_orin(tmp_path)
    write(tree, "etc/nv_tegra_release", R36_RELEASE.replace("4.4", "4.9"))  # not in the table
    state = ds.collect(str(tree), run=replay(commands))
    assert (state["l4t"], state["jetpack"]) == ("36.4.9", "6.2.1")


def test_thor_from_the_l4t_core_package_and_its_missing_dla(tmp_path):
    write(tmp_path, "proc/device-tree/model", b"NVIDIA Jetson AGX Thor Developer Kit\0")
    run = replay({("dpkg-query", "-W", "nvidia-l4t-core"): L4T_CORE_38})
    state = ds.collect(str(tmp_path), run=run)
    assert (state["l4t"], state["jetpack"]) == ("38.4.0", "7.1")
    assert state["dla_cores"] == 0 and state["power_mode"] is None
    assert ["nvpmodel", "-q"] in run.calls


def test_power_mode_id_is_looked_up_by_name():
    # `nvpmodel -q` may print a number that is not the table's id for that name (or none):
    # the table decides.
    run = replay({("nvpmodel", "-q"): "NV Power Mode: MODE_30W_ALL\n",
                  ("nvpmodel", "-p", "--verbose"): NVPMODEL_TABLE})
    assert ds.power_mode(run) == {"name": "MODE_30W_ALL", "id": 3}
    assert ds.power_mode_id("MODE_10W", run) == 1
    assert ds.power_mode_id("MAXN_SUPER", run) is None
    assert ds.power_mode(replay({})) is None


def test_not_a_jetson_tree_has_every_jetson_field_none(tmp_path):
    write(tmp_path, "proc/cpuinfo", CPUINFO_X86)
    write(tmp_path, "proc/device-tree/model", b"Raspberry Pi 4 Model B Rev 1.4\0")
    state = ds.collect(str(tmp_path))
    for key in ("module", "soc", "l4t", "jetpack", "power_mode", "clocks_locked",
                "gpu_freq_hz", "emc_freq_hz", "dla_cores"):
        assert state[key] is None, key
    assert state["is_jetson"] is False
    assert state["cpu_model"] == "AMD EPYC 7B13"
    assert state["temperatures_c"] == {} and state["cuda"] is None
    assert ds.jetson_info(str(tmp_path)) is None


def test_empty_tree_does_not_raise(tmp_path):
    state = ds.collect(str(tmp_path))
    assert state["is_jetson"] is False and state["cpu_model"] is None


def test_this_machine():
    state = ds.collect()
    json.dumps(state)
    assert state["is_jetson"] == (os.path.exists("/etc/nv_tegra_release") or
                                  state["l4t"] is not None or state["soc"] is not None)
    assert state["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    assert state["hostname"]
    if not state["is_jetson"]:
        assert state["module"] is None and state["power_mode"] is None


@pytest.mark.parametrize("text,expected", [
    (R36_RELEASE, "36.4.4"), (R38_RELEASE, "38.2.0"),
    ("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64", "32.7.1"),
    ("# R35 (release), REVISION: 1, GCID: 1", "35.1.0"), ("garbage", None)])
def test_parse_tegra_release(text, expected):
    assert ds.parse_tegra_release(text) == expected


def test_small_parsers():
    assert ds.parse_l4t_core_package(L4T_CORE_38) == "38.4.0"
    assert ds.parse_l4t_core_package("dpkg-query: no packages found") is None
    assert ds.parse_jetpack_package("5.1.2-b104") == "5.1.2"
    assert ds.parse_device_tree_model("NVIDIA Jetson Nano Developer Kit\0") == \
        "NVIDIA Jetson Nano Developer Kit"
    assert ds.parse_nvpmodel_query("NV Power Mode: MAXN\n0\n") == {"name": "MAXN", "id": 0}
    assert ds.parse_nvpmodel_query("nvpmodel: command failed") is None


@pytest.mark.parametrize("module,cores", [
    ("NVIDIA Jetson Orin Nano Developer Kit", 0), ("NVIDIA Jetson AGX Thor Developer Kit", 0),
    ("NVIDIA Jetson Nano Developer Kit", 0), ("NVIDIA Jetson AGX Orin Developer Kit", 2),
    ("NVIDIA Jetson Xavier NX Developer Kit", 2), ("NVIDIA Jetson Orin NX Engineering "
                                                   "Reference Developer Kit", None), (None, None)])
def test_dla_cores_by_module(module, cores):
    assert ds.dla_core_count(module) == cores
    assert ds.module_has_no_dla(module) is (cores == 0)


def test_cpu_model_names_an_unknown_arm_part(tmp_path):
    write(tmp_path, "proc/cpuinfo", "CPU implementer\t: 0x41\nCPU part\t: 0xd99\n")
    assert ds.cpu_model(str(tmp_path)) == "Arm implementer 0x41 part 0xd99"


def test_cuda_version_from_nvcc_output(tmp_path):
    run = replay({("nvcc", "--version"): "nvcc: NVIDIA (R) Cuda compiler driver\n"
                  "Cuda compilation tools, release 11.4, V11.4.315\n"})
    assert ds.cuda_version(str(tmp_path), run) == "11.4.315"
    write(tmp_path, "usr/local/cuda/version.txt", "CUDA Version 10.2.300\n")
    assert ds.cuda_version(str(tmp_path), run) == "10.2.300"


def test_state_cli_prints_and_writes_the_same_json(tmp_path):
    tree = fake_orin(tmp_path / "root")
    out = tmp_path / "state.json"
    done = subprocess.run([sys.executable, "-m", "jetson.state", "--root", str(tree),
                           "--output", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed == json.loads(out.read_text())
    assert printed["module"] == "NVIDIA Jetson AGX Orin Developer Kit"
    assert printed["power_mode"] is None  # commands never run against a fake root


def test_state_cli_summary_and_bad_root(tmp_path):
    done = subprocess.run([sys.executable, "jetson/state.py", "--summary", "--root",
                           str(fake_orin(tmp_path))], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "JetPack: 6.2.1" in done.stdout and "CUDA: 12.6.68" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "jetson.state", "--root", str(tmp_path / "no")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --root")


@pytest.mark.parametrize("l4t, jetpack", [
    ("35.2.1", "5.1"), ("35.3.1", "5.1.1"), ("35.4.1", "5.1.2"), ("35.5.0", "5.1.3"),
    ("35.6.0", "5.1.4"), ("35.6.1", "5.1.5"), ("35.6.2", "5.1.5"),
    ("36.2.0", "6.0 DP"), ("36.3.0", "6.0"), ("36.4.0", "6.1"), ("36.4.3", "6.2"),
    ("36.4.4", "6.2.1"), ("38.2.0", "7.0"), ("38.2.1", "7.0"), ("38.4.0", "7.1"),
    ("39.2.0", "7.2"),
])
def test_l4t_to_jetpack_covers_every_jetpack_5_1_6_and_7_release(l4t, jetpack):
    from jetson.device_state import jetpack_for_l4t

    assert jetpack_for_l4t(l4t) == jetpack


def test_a_jetpack_5_1_4_tree_reads_its_jetpack_from_the_table(tmp_path):
    from jetson.device_state import jetson_info

    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R35 (release), REVISION: 6.0, GCID: 1\n")
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\0")
    info = jetson_info(str(tmp_path))
    assert (info["l4t"], info["jetpack"]) == ("35.6.0", "5.1.4")
