"""tegrastats parsing on real lines of each module's format, board power, energy, the sampler."""
from __future__ import annotations

import shutil
import stat
import sys
import textwrap
import time
from datetime import datetime

import pytest

from common.errors import ToolkitError
from jetson.tegrastats import (
    TegrastatsSample,
    TegrastatsSampler,
    board_power_mw,
    board_power_source,
    energy_j,
    parse_line,
    sample_times,
    summarise_samples,
)

# TX2 (no timestamp, rails without "mW"): the line rbonghi/jetson_stats tests/tegrastats emulates
# (GR3D load fixed at 37 where the emulator draws a random one).
TX2 = ("RAM 4722/7844MB (lfb 1x512kB) CPU [55%@2035,14%@2034,27%@2034,55%@2035,47%@2035,"
       "45%@2035] SWAP 149/1024MB (cached 7MB) EMC_FREQ 2%@1866 GR3D_FREQ 37%@1300 APE 150 "
       "MTS fg 0% bg 0% BCPU@-45C MCPU@-45C GPU@-51C PLL@45C AO@47.5C Tboard@37C Tdiode@46.75C "
       "PMIC@100C thermal@46.4C VDD_IN 14025/14416 VDD_CPU 2209/2538 VDD_GPU 6854/6903 "
       "VDD_SOC 1371/1370 VDD_WIFI 19/19 NVENC 716 NVDEC 716 VDD_DDR 2702/2702")
# Jetson Nano, JetPack 4 (POM_ rails, no unit, IRAM): rbonghi/jetson_stats tests/tegrastats.
NANO = ("RAM 1180/3965MB (lfb 1x2MB) SWAP 149/1024MB (cached 7MB) IRAM 0/252kB(lfb 252kB) "
        "CPU [30%@1036,33%@1036,28%@1036,26%@1036] EMC_FREQ 10%@1600 GR3D_FREQ 0%@76 NVENC 716 "
        "NVDEC 716 APE 25 PLL@57C CPU@60.5C PMIC@100C GPU@59C AO@65C thermal@59.75C "
        "POM_5V_IN 4520/4680 POM_5V_GPU 0/0 POM_5V_CPU 1078/1205")
# AGX Xavier, JetPack 5 (rails named GPU/CPU/SOC/CV/VDDRQ/SYS5V): a captured line quoted in a
# public Rust test (found through the code index), which starts inside the CPU field.
AGX_XAVIER = ("[0%@1190,1%@1190,0%@1190,0%@1189,0%@1190,0%@1191,0%@1190,0%@1190] EMC_FREQ 0%@1331 "
              "GR3D_FREQ 0%@114 VIC_FREQ 115 APE 150 AUX@36C CPU@36.5C thermal@35.7C Tboard@37C "
              "AO@35C GPU@35C Tdiode@38.75C PMIC@50C GPU 467mW/467mW CPU 467mW/467mW "
              "SOC 1245mW/1245mW CV 0mW/0mW VDDRQ 311mW/311mW SYS5V 2768mW/2768mW")
# Orin Nano 8GB, JetPack 6 (timestamp, VDD_IN in mW/mW): a capture quoted in a public Python
# script found through the code index.
ORIN_NANO = ("09-21-2025 15:38:17 RAM 3645/7620MB (lfb 63x4MB) SWAP 236/3810MB (cached 0MB) "
             "CPU [1%@729,1%@729,4%@729,1%@729,0%@729,0%@729] EMC_FREQ 0%@204 GR3D_FREQ 0%@[305] "
             "NVDEC off NVJPG off NVJPG1 off VIC off OFA off APE 200 cpu@44.125C soc2@43.375C "
             "soc0@42.125C gpu@44.531C tj@44.531C soc1@43.156C VDD_IN 2957mW/2957mW "
             "VDD_CPU_GPU_CV 486mW/486mW VDD_SOC 1012mW/1012mW")
# Orin NX/Nano, JetPack 5 (two cores "off", upper-case zones): quoted in a public JS parser.
ORIN_JP5 = ("01-24-2024 09:17:09 RAM 3503/7337MB (lfb 7x1MB) SWAP 430/3668MB (cached 1MB) "
            "CPU [11%@729,13%@729,9%@729,18%@729,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@305 "
            "GR3D2_FREQ 0%@0 VIC_FREQ 115 APE 174 CV0@42.718C CPU@44.093C SOC2@42.625C "
            "SOC0@43.281C CV1@42.25C GPU@41.343C tj@46.968C SOC1@46.968C CV2@42.875C "
            "VDD_IN 4915mW/4915mW VDD_CPU_GPU_CV 449mW/449mW VDD_SOC 1431mW/1431mW")
# AGX Orin, L4T 36.4.4: lesomnus/tegra-exporter stats/parse_test.go.
AGX_ORIN = ("05-09-2026 18:42:07 RAM 18202/62841MB (lfb 466x4MB) SWAP 86/31420MB (cached 0MB) "
            "CPU [16%@1949,6%@1761,4%@1222,4%@2201,4%@1036,33%@1036,0%@1036,40%@1036,3%@1190,"
            "46%@1190,6%@1190,2%@1190] EMC_FREQ 3%@2133 GR3D_FREQ 0%@[0,0] NVENC 78%@166 "
            "NVDEC off NVJPG off NVJPG1 off VIC 32%@115 OFA off NVDLA0 off NVDLA1 off "
            "PVA0_FREQ off APE 174 cpu@52.343C soc2@48.343C soc0@49.062C tj@52.343C "
            "soc1@49.531C VDD_GPU_SOC 2412mW/2412mW VDD_CPU_CV 1607mW/1607mW "
            "VIN_SYS_5V0 4607mW/4657mW")
# AGX Orin, JetPack 7.2 (L4T 39.2): rbonghi/jetson_stats GR3D test (per-GPC clock array).
AGX_ORIN_JP7 = ("07-25-2026 09:08:28 RAM 20642/62817MB (lfb 1x2MB) CPU [23%@2201,10%@2201,"
                "4%@2201,14%@2201,30%@2201,18%@2201,10%@2201,10%@2201,33%@2201,7%@2201,5%@2201,"
                "27%@2201] EMC_FREQ 3%@3199 GR3D_FREQ 12%@[1300,1300] NVENC0 off NVDEC0 off "
                "NVJPG0 off NVJPG1 off VIC off OFA off NVDLA0 off NVDLA1 off PVA0_FREQ off "
                "APE 174 cpu@52.968C/52.968C soc2@48.406C/48.406C soc0@49.531C/49.531C "
                "gpu@47.625C/47.625C VDD_GPU_SOC 5139mW/5139mW/5139mW "
                "VDD_CPU_CV 3268mW/3268mW/3268mW VIN_SYS_5V0 5500mW/5500mW/5500mW")
# AGX Thor, L4T 38.4 (no GPU load, VDD_CPU_SOC_MSS): lesomnus/tegra-exporter parse_test.go.
THOR_R38 = ("05-17-2026 10:00:33 RAM 4280/125773MB (lfb 29x4MB) SWAP 0/2048MB (cached 0MB) "
            "CPU [0%@972,0%@972,0%@972,0%@972,1%@972,0%@972,1%@972,0%@972,0%@2601,17%@2601,"
            "1%@972,9%@972,0%@972,1%@972] EMC_FREQ 0%@665 GR3D_FREQ @[0,0,0] NVENC0_FREQ @0 "
            "NVENC1_FREQ @0 NVDEC0_FREQ @0 NVDEC1_FREQ @0 NVJPG0_FREQ @0 VIC off OFA_FREQ @0 "
            "PVA0_FREQ off APE 300 cpu@35.25C tj@36.031C soc012@36.062C soc345@34.5C "
            "VDD_GPU 0mW/0mW VDD_CPU_SOC_MSS 4923mW/4544mW VIN_SYS_5V0 4327mW/4227mW")
# AGX Thor, L4T 39.2 (three values a rail: current/average/peak; temperatures current/peak).
THOR_R39 = ("07-23-2026 15:29:27 RAM 9091/125811MB (lfb 19x4MB) SWAP 0/2048MB (cached 0MB) "
            "CPU [40%@972,16%@972,18%@972,20%@972,13%@972,11%@972,15%@972,19%@972,10%@972,"
            "15%@972,28%@972,11%@972,11%@972,15%@972] EMC_FREQ 7%@3200 GR3D_FREQ @[314,314,314] "
            "NVENC0_FREQ @1556 NVENC1_FREQ @1556 NVDEC0_FREQ @1556 NVDEC1_FREQ @1556 "
            "NVJPG0_FREQ @1556 VIC 59%@423 OFA_FREQ @1556 PVA0_FREQ off APE 300 "
            "cpu@34.312C/34.843C tj@35.906C/35.906C soc012@34.093C/34.437C gpu@35.906C/35.906C "
            "soc345@34.437C/34.437C VDD_GPU 4925mW/4925mW/4925mW "
            "VDD_CPU_SOC_MSS 7953mW/8332mW/8710mW VIN_SYS_5V0 6667mW/6717mW/6767mW")


def test_tx2_line_without_timestamp_and_without_units():
    s = parse_line(TX2)
    assert s.timestamp is None
    assert (s.ram_used_mb, s.ram_total_mb) == (4722, 7844)
    assert (s.swap_used_mb, s.swap_total_mb) == (149, 1024)
    assert s.cpu_load_pct == [55, 14, 27, 55, 47, 45] and s.cpu_freq_mhz[1] == 2034
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (37, [1300])
    assert (s.emc_load_pct, s.emc_freq_mhz) == (2, 1866)
    assert s.rails_mw == {"VDD_IN": 14025, "VDD_CPU": 2209, "VDD_GPU": 6854, "VDD_SOC": 1371,
                          "VDD_WIFI": 19, "VDD_DDR": 2702}
    assert s.rails_avg_mw["VDD_IN"] == 14416 and s.rails_peak_mw == {}
    assert s.temperatures_c["BCPU"] == -45 and s.temperatures_c["Tdiode"] == 46.75
    assert board_power_source(s) == ("VDD_IN",) and board_power_mw(s) == 14025


def test_nano_pom_rails_and_iram_are_not_mistaken_for_rails():
    s = parse_line(NANO)
    assert s.rails_mw == {"POM_5V_IN": 4520, "POM_5V_GPU": 0, "POM_5V_CPU": 1078}
    assert s.rails_avg_mw["POM_5V_CPU"] == 1205
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (0, [76])
    assert board_power_mw(s) == 4520  # POM_5V_IN is the module input


def test_agx_xavier_rails_without_vdd_prefix_are_summed():
    s = parse_line(AGX_XAVIER)
    assert s.ram_used_mb is None and s.cpu_load_pct == []  # the capture starts mid-line
    assert s.rails_mw["GPU"] == 467 and s.rails_mw["SYS5V"] == 2768
    assert s.temperatures_c["CPU"] == 36.5 and s.temperatures_c["PMIC"] == 50
    assert board_power_mw(s) == 467 + 467 + 1245 + 0 + 311 + 2768


def test_orin_nano_timestamp_bracketed_gpu_clock_and_vdd_in():
    s = parse_line(ORIN_NANO)
    assert s.timestamp == datetime(2025, 9, 21, 15, 38, 17)
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (0, [305])
    assert s.rails_mw == {"VDD_IN": 2957, "VDD_CPU_GPU_CV": 486, "VDD_SOC": 1012}
    assert s.temperatures_c["tj"] == 44.531
    assert board_power_mw(s) == 2957


def test_orin_offline_cores_read_as_none():
    s = parse_line(ORIN_JP5)
    assert s.cpu_load_pct == [11, 13, 9, 18, None, None]
    assert s.cpu_freq_mhz == [729, 729, 729, 729, None, None]
    assert s.gpu_freq_mhz == [305]  # GR3D2_FREQ is the second GPC, not the GPU field
    assert s.temperatures_c["CV2"] == 42.875 and board_power_mw(s) == 4915


def test_agx_orin_module_power_sums_its_three_rails():
    s = parse_line(AGX_ORIN)
    assert s.rails_mw == {"VDD_GPU_SOC": 2412, "VDD_CPU_CV": 1607, "VIN_SYS_5V0": 4607}
    assert s.rails_avg_mw["VIN_SYS_5V0"] == 4657
    assert len(s.cpu_load_pct) == 12 and s.gpu_freq_mhz == [0, 0]
    assert board_power_source(s) == ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0")
    assert board_power_mw(s) == 2412 + 1607 + 4607


def test_jetpack7_three_values_per_rail_and_two_per_temperature():
    s = parse_line(AGX_ORIN_JP7)
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (12, [1300, 1300])
    assert s.rails_mw["VDD_CPU_CV"] == 3268 and s.rails_peak_mw["VDD_CPU_CV"] == 3268
    assert s.temperatures_c["cpu"] == 52.968
    t = parse_line(THOR_R39)
    assert t.rails_mw["VDD_CPU_SOC_MSS"] == 7953  # current, not the average or the peak
    assert t.rails_avg_mw["VDD_CPU_SOC_MSS"] == 8332 and t.rails_peak_mw["VDD_CPU_SOC_MSS"] == 8710
    assert t.temperatures_c["cpu"] == 34.312  # current; 34.843 is the peak
    assert board_power_mw(t) == 4925 + 7953 + 6667


def test_thor_gpu_field_has_clocks_but_no_load():
    s = parse_line(THOR_R38)
    assert s.gpu_load_pct is None and s.gpu_freq_mhz == [0, 0, 0]
    assert s.emc_freq_mhz == 665 and len(s.cpu_load_pct) == 14
    assert "APE" not in s.rails_mw and "NVENC0_FREQ" not in s.rails_mw
    assert board_power_mw(s) == 0 + 4923 + 4327


def test_formats_named_in_the_issue():
    # The rail forms the issue lists, on otherwise minimal lines (not captures).
    assert parse_line("RAM 1/2MB VDD_IN 5234mW/5234mW").rails_mw == {"VDD_IN": 5234}
    s = parse_line("VDD_GPU_SOC 1234/1200 VDD_CPU_CV 20/20 VIN_SYS_5V0 3000/3000")
    assert s.rails_avg_mw["VDD_GPU_SOC"] == 1200 and board_power_mw(s) == 4254
    assert parse_line("POM_5V_IN 2796/2710").rails_avg_mw == {"POM_5V_IN": 2710}


def test_offline_sensor_is_left_out():
    s = parse_line("RAM 1500/7850MB cpu@-256C tj@47.343C VDD_IN 10/10")
    assert s.temperatures_c == {"tj": 47.343}


@pytest.mark.parametrize("line", ["", "hello world", "NVPM VERB: POWER_MODEL: ID=0 NAME=MAXN"])
def test_not_a_tegrastats_line_is_refused(line):
    with pytest.raises(ToolkitError, match="not a tegrastats line"):
        parse_line(line)


def test_board_power_unknown_without_an_input_rail():
    s = parse_line("RAM 1/2MB VDD_GPU 1/1")  # a partial rail set names no input
    assert board_power_source(s) is None and board_power_mw(s) is None


def _samples(powers_mw, step_s, rail="VDD_IN"):
    return [TegrastatsSample(received_s=100.0 + i * step_s, rails_mw={rail: p})
            for i, p in enumerate(powers_mw)]


def test_energy_trapezoid_exact_on_constant_and_ramp():
    assert energy_j([0.0, 1.0, 2.0], [5000.0, 5000.0, 5000.0]) == pytest.approx(10.0)
    ramp_t = [i / 10 for i in range(11)]
    assert energy_j(ramp_t, [1000.0 * t for t in ramp_t]) == pytest.approx(0.5)
    # unequal spacing: 1 W for 0.5 s, then the mean of 1 and 3 W for 1.5 s
    assert energy_j([0.0, 0.5, 2.0], [1000.0, 1000.0, 3000.0]) == pytest.approx(3.5)


def test_energy_refuses_too_few_or_backward_samples():
    with pytest.raises(ToolkitError, match="at least 2 samples"):
        energy_j([0.0], [1.0])
    with pytest.raises(ToolkitError, match="backwards"):
        energy_j([0.0, 2.0, 1.0], [1.0, 1.0, 1.0])
    with pytest.raises(ToolkitError, match="3 times but 2 powers"):
        energy_j([0.0, 1.0, 2.0], [1.0, 1.0])


def test_sample_times_fall_back_to_interval_when_lines_arrive_bunched():
    spread = _samples([1, 2, 3], 0.1)
    assert sample_times(spread, 100) == pytest.approx([0.0, 0.1, 0.2])
    bunched = _samples([1, 2, 3, 4], 0.0001)  # a pipe buffer flushed all at once
    assert sample_times(bunched, 100) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    stamped = [parse_line(AGX_ORIN), parse_line(AGX_ORIN.replace("18:42:07", "18:42:09"))]
    assert sample_times(stamped) == [0.0, 2.0]
    assert sample_times([parse_line(TX2)] * 2) is None  # no clock at all


def test_summary_of_synthetic_samples():
    samples = _samples([4000.0, 6000.0, 6000.0, 4000.0], 0.5)
    summary = summarise_samples(samples, interval_ms=500)
    assert summary["samples"] == 4 and summary["duration_s"] == pytest.approx(1.5)
    board = summary["board_power"]
    assert board["rails"] == ["VDD_IN"] and board["mean_mw"] == 5000.0 and board["max_mw"] == 6000
    assert board["energy_j"] == pytest.approx(2.5 + 3.0 + 2.5)  # 0.5 s trapezoids of 5, 6, 5 W
    assert summary["rails"]["VDD_IN"] == {"mean_mw": 5000.0, "min_mw": 4000.0, "max_mw": 6000.0,
                                          "samples": 4}


def test_summary_of_real_lines_is_json_ready():
    import json

    summary = summarise_samples([parse_line(line) for line in (THOR_R38, THOR_R39)])
    json.dumps(summary)
    assert summary["temperatures_max_c"]["cpu"] == 35.25
    assert summary["gpu_load_pct"] is None  # Thor prints no GPU load
    assert summary["board_power"]["rails"] == ["VDD_GPU", "VDD_CPU_SOC_MSS", "VIN_SYS_5V0"]
    assert json.loads(json.dumps(parse_line(THOR_R39).to_dict()))["timestamp"] == \
        "2026-07-23T15:29:27"


@pytest.mark.skipif(shutil.which("tegrastats") is not None, reason="this machine has tegrastats")
def test_sampler_refuses_cleanly_where_there_is_no_tegrastats():
    with pytest.raises(ToolkitError, match="not a Jetson: tegrastats not found"):
        with TegrastatsSampler(100):
            pass  # pragma: no cover


def _replay_tool(tmp_path, lines, exit_code=0, stderr=""):
    """An executable that prints captured tegrastats lines at the asked interval: it exercises
    the sampler's process and thread handling; the power figures are those of the captures."""
    script = tmp_path / "tegrastats_replay"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys, time
        assert sys.argv[1:3] == ["--interval", sys.argv[2]], sys.argv
        interval = int(sys.argv[2]) / 1000
        for line in {lines!r}:
            time.sleep(interval)
            print(line, flush=True)
        if {stderr!r}:
            print({stderr!r}, file=sys.stderr)
        if {exit_code}:
            sys.exit({exit_code})
        time.sleep(60)
        """))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_sampler_collects_timed_samples_from_a_process(tmp_path):
    lines = [ORIN_NANO.replace("VDD_IN 2957", f"VDD_IN {p}") for p in (3000, 5000, 5000, 3000)]
    tool = _replay_tool(tmp_path, lines + ["garbage line"])
    with TegrastatsSampler(interval_ms=50, executable=tool) as sampler:
        deadline = time.monotonic() + 10
        while (len(sampler.samples) < 4 or not sampler.unparsed_lines) and \
                time.monotonic() < deadline:
            time.sleep(0.02)
    assert [s.rails_mw["VDD_IN"] for s in sampler.samples] == [3000, 5000, 5000, 3000]
    assert sampler.unparsed_lines == 1
    times = sampler.times_s()
    assert times[0] == 0.0 and all(b > a for a, b in zip(times, times[1:]))
    assert sampler.mean_power_mw() == 4000.0
    assert sampler.mean_power_mw("VDD_SOC") == 1012.0
    assert sampler.energy_j() == pytest.approx(energy_j(times, [3000, 5000, 5000, 3000]))
    assert sampler.rail_stats()["VDD_IN"]["max_mw"] == 5000
    with pytest.raises(ToolkitError, match="lack rail VDD_GPU"):
        sampler.energy_j("VDD_GPU")


def test_sampler_stops_its_process_when_the_block_raises(tmp_path):
    tool = _replay_tool(tmp_path, [ORIN_NANO])
    with pytest.raises(RuntimeError, match="measurement failed"):
        with TegrastatsSampler(interval_ms=20, executable=tool) as sampler:
            proc = sampler._proc
            raise RuntimeError("measurement failed")
    assert proc.poll() is not None  # terminated, not left running


def test_sampler_reports_tegrastats_failing_by_itself(tmp_path):
    tool = _replay_tool(tmp_path, [], exit_code=3, stderr="Error: run as root")
    with pytest.raises(ToolkitError, match="exited with status 3: Error: run as root"):
        with TegrastatsSampler(interval_ms=10, executable=tool) as sampler:
            # Wait for the tool to exit by itself (a loaded CI machine may take seconds to
            # start it): a sampler still running at exit is stopped, not an error.
            deadline = time.monotonic() + 30
            while sampler._proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)


@pytest.mark.jetson
@pytest.mark.skipif(shutil.which("tegrastats") is None, reason="needs tegrastats (a Jetson)")
def test_real_tegrastats_gives_board_power_and_energy():
    with TegrastatsSampler(interval_ms=100) as sampler:
        time.sleep(1.5)
    assert len(sampler.samples) >= 5, f"{len(sampler.samples)} samples in 1.5 s"
    assert sampler.mean_power_mw() > 0
    assert sampler.energy_j() > 0
