"""jetson/setup.sh: its help, its refusal of a machine that is not a Jetson, its detection on a
fake Jetson tree, and the pip constraints that keep `pip install tensorrt` out of its venv."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "jetson" / "setup.sh"
ON_JETSON = os.path.exists("/etc/nv_tegra_release")


def run_setup(*args, env=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("JETSON_")}
    full_env.update(env or {})
    return subprocess.run(["bash", str(SETUP), *args], capture_output=True, text=True,
                          env=full_env, timeout=60, cwd=ROOT)


def test_help_explains_every_variable():
    done = run_setup("--help")
    assert done.returncode == 0, done.stderr
    script = SETUP.read_text()
    used = set(re.findall(r"\$\{([A-Z_]+)[:}-]", script)) - {"BASH_SOURCE", "LD_LIBRARY_PATH"}
    assert used >= {"VENV", "PYTHON", "CUDA_HOME", "JETSON_SETUP_FORCE"}
    for name in used:
        assert name in done.stdout, f"--help does not explain {name}"


@pytest.mark.skipif(ON_JETSON, reason="this is a Jetson")
def test_refuses_a_machine_that_is_not_a_jetson():
    done = run_setup()
    assert done.returncode != 0
    assert "error: this is not a Jetson" in done.stderr
    assert "JETSON_SETUP_FORCE=1" in done.stderr


def test_detects_a_fake_jetson_tree(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.4, GCID: 1\n")
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\0")
    done = run_setup("--check-only", env={"JETSON_ROOT": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert "Jetson: NVIDIA Jetson Orin Nano Developer Kit; # R36 (release)" in done.stdout


def test_force_passes_the_check(tmp_path):
    done = run_setup("--check-only", "--force", env={"JETSON_ROOT": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert "continuing because of --force" in done.stdout
    assert run_setup("--bogus").returncode == 2


def _fake_wheel(directory: Path, name: str, version: str) -> Path:
    """A minimal, valid wheel, so pip's resolver can be asked about it offline."""
    dist = f"{name}-{version}.dist-info"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"{name}/__init__.py", "")
        zf.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\n"
                                        f"Version: {version}\n")
        zf.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                                     "Root-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{dist}/RECORD", "")
    return wheel


def _pip_dry_run(tmp_path, package, config=None):
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    if config is not None:
        env["PIP_CONFIG_FILE"] = str(config)
    return subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index",
                           "--find-links", str(tmp_path), "--ignore-installed", package],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.slow
def test_pip_conf_written_by_setup_refuses_tensorrt(tmp_path):
    pip_version = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True,
                                 text=True).stdout.split()
    if len(pip_version) < 2 or tuple(int(x) for x in pip_version[1].split(".")[:2]) < (22, 2):
        pytest.skip("pip install --dry-run needs pip >= 22.2")
    for name in ("tensorrt", "tensorrt_cu12", "tqdm_like"):
        _fake_wheel(tmp_path, name, "10.3.0")
    # the two lines setup.sh writes into $VENV/pip.conf
    line = next(x for x in SETUP.read_text().splitlines() if "pip.conf" in x and "printf" in x)
    assert "[install]" in line and '"$CONSTRAINTS"' in line
    assert 'CONSTRAINTS="$REPO/jetson/pip-constraints.txt"' in SETUP.read_text()  # the default
    config = tmp_path / "pip.conf"
    config.write_text(f"[install]\nconstraint = {ROOT / 'jetson' / 'pip-constraints.txt'}\n")
    allowed = _pip_dry_run(tmp_path, "tensorrt")  # control: the wheel itself installs
    assert allowed.returncode == 0 and "Would install tensorrt-10.3.0" in allowed.stdout, \
        allowed.stderr
    for package in ("tensorrt", "tensorrt-cu12"):
        refused = _pip_dry_run(tmp_path, package, config)
        assert refused.returncode != 0, refused.stdout
        assert "tensorrt" in refused.stderr.lower()
    other = _pip_dry_run(tmp_path, "tqdm_like", config)  # everything else still installs
    assert other.returncode == 0, other.stderr


# ---------------------------------------------------------------- issue 21: wheels, serve, TRT

def _tegra_tree(root: Path, release: str) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc/nv_tegra_release").write_text(f"# {release}, GCID: 1, BOARD: generic\n")
    return root


@pytest.mark.parametrize("release, trt, allowed", [
    ("R39 (release), REVISION: 2.0", "11.4.1.6", True),
    ("R39 (release), REVISION: 2.0", "11.6.0.2", True),
    ("R39 (release), REVISION: 2.0", "11.4.0.9", False),  # older than the SBSA wheels
    ("R38 (release), REVISION: 4.0", "11.4.1.6", False),  # JetPack 7.1: not L4T 39
    ("R36 (release), REVISION: 4.4", "10.3.0.30", False),
])
def test_tensorrt_wheels_are_allowed_only_at_the_system_version_on_l4t_39(
        tmp_path, release, trt, allowed):
    root = _tegra_tree(tmp_path / "root", release)
    done = run_setup("--print-constraints", env={"JETSON_ROOT": str(root),
                                                 "TENSORRT_VERSION": trt, "PYTHON": "false"})
    assert done.returncode == 0, done.stderr
    lines = [x for x in done.stdout.splitlines() if x and not x.startswith("#")]
    if allowed:
        assert f"tensorrt=={trt}" in lines and f"tensorrt-cu13=={trt}" in lines
        assert "tensorrt<0" not in lines and "tensorrt-cu13<0" not in lines
        assert "tensorrt-cu12<0" in lines  # other CUDA families stay refused
    else:
        assert "tensorrt<0" in lines and not any("==" in x for x in lines)


FAKE_PYTHON = r'''#!/usr/bin/env bash
# Stands for the system/venv python: records pip calls, answers version questions.
echo "$*" >> "$FAKE_LOG"
case "$1" in
    -m) case "$2" in
            venv) mkdir -p "$4/bin" && cp "$0" "$4/bin/python" ;;
        esac
        exit 0 ;;
    -c) case "$2" in
            *"version_info[:2]"*) echo "$FAKE_PY" ;;
            *"import tensorrt"*) exit 1 ;;
        esac
        exit 0 ;;
esac
exit 0
'''


def _run_with_fake_python(tmp_path, version, **env):
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    done = run_setup("--force", env={"PYTHON": str(fake), "FAKE_PY": version,
                                     "FAKE_LOG": str(log), "VENV": str(tmp_path / "venv"),
                                     "JETSON_ROOT": str(tmp_path / "empty"),
                                     "JETSON_SETUP_SKIP_PYCUDA": "1", **env})
    assert done.returncode == 0, done.stderr
    return [line for line in log.read_text().splitlines() if "pip install" in line]


def test_python_3_8_installs_binary_wheels_only_and_the_serving_requirements(tmp_path):
    installs = [x for x in _run_with_fake_python(tmp_path, "3.8") if "-r " in x]
    assert any("requirements/device.txt" in x for x in installs)
    assert any("requirements/serve.txt" in x for x in installs)
    assert all("--only-binary=:all:" in x for x in installs), installs


def test_python_3_10_prefers_wheels_and_serving_can_be_skipped(tmp_path):
    installs = _run_with_fake_python(tmp_path, "3.10", JETSON_SETUP_NO_SERVE="1")
    requirements = [x for x in installs if "-r " in x]
    assert requirements and all("--prefer-binary" in x for x in requirements)
    assert not any("serve.txt" in x for x in installs)


@pytest.mark.slow
def test_l4t_39_constraints_let_pip_install_only_the_matching_tensorrt_wheel(tmp_path):
    pip_version = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True,
                                 text=True).stdout.split()
    if len(pip_version) < 2 or tuple(int(x) for x in pip_version[1].split(".")[:2]) < (22, 2):
        pytest.skip("pip install --dry-run needs pip >= 22.2")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for version in ("11.4.1.6", "11.5.0.1"):
        _fake_wheel(wheels, "tensorrt", version)
    root = _tegra_tree(tmp_path / "root", "R39 (release), REVISION: 2.0")
    done = run_setup("--print-constraints", env={"JETSON_ROOT": str(root),
                                                 "TENSORRT_VERSION": "11.4.1.6",
                                                 "PYTHON": "false"})
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(done.stdout)
    config = tmp_path / "pip.conf"
    config.write_text(f"[install]\nconstraint = {constraints}\n")
    matching = _pip_dry_run(wheels, "tensorrt", config)
    assert matching.returncode == 0 and "Would install tensorrt-11.4.1.6" in matching.stdout, \
        matching.stderr
    other = _pip_dry_run(wheels, "tensorrt==11.5.0.1", config)
    assert other.returncode != 0
