"""The device check's steps: what each one does, what it needs and how long it may take.

Order (each name is a step; ``<m>`` each fixture tests/fixtures/tiny_* and then each model
models/*.onnx; ``<p>`` fp32, fp16, int8):

    versions                     versions + device state (subprocess)          60 s
    tensorrt, gpu                TensorRT importable / pycuda uses GPU 0         5 s  needs versions
    parse-table-<onnx>           the static table's verdicts (no TensorRT)      30 s
    parse-trt-<onnx>             the real parser against the table              60 s  tensorrt, gpu
    onnxruntime-<m>              ONNX Runtime against the committed reference   90 s  versions
    build-<m>-<p>                python -m engines.build                       180 s  tensorrt, gpu
    classify|generate-<m>-<p>    runtime CLI / Generator against the reference  90 s  build-<m>-<p>
    bench-<m>-<p>                runtime/bench.py --engine                      90 s  build-<m>-<p>
    triton                       run_triton.sh + one classify + one stream     240 s
    regress                      python -m benchmarks.regress per suite report 120 s

Fixtures' steps run before the models' (a real model's builds may use the rest of the budget).
The comparisons and their tolerances are in ``benchmarks.device_check_compare``.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from benchmarks import device_check_compare as compare
from benchmarks.device_check import ROOT, SkipStep, Step, StepContext, last_line, run_command
from common.errors import ToolkitError
from common.fileio import read_json
from engines import trt_info

FIXTURES = ROOT / "tests" / "fixtures"
PRECISIONS = ("fp32", "fp16", "int8")
VARIANTS = (".fp16.onnx", ".qdq.onnx")
BUILD_OPT_LEVEL = 0  # builds fastest; the check needs correct engines, not tuned ones
WORKERS = "benchmarks.device_check_workers"


@dataclass(frozen=True)
class Target:
    """A model the check builds and runs: a committed fixture or a models/*.onnx."""

    name: str
    onnx: Path
    kind: str  # "classifier" | "decoder"
    origin: str  # "fixture" | "model"

    def variant(self, suffix: str) -> Path:
        return self.onnx.with_name(f"{self.name}{suffix}")

    @property
    def reference(self) -> Optional[Path]:
        path = self.onnx.with_suffix(".reference.json")
        return path if self.origin == "fixture" and path.is_file() else None


def find_targets(directory: Path, pattern: str, origin: str) -> List[Target]:
    """FP32 graphs (not their .fp16/.qdq variants) with a sidecar, sorted by name."""
    targets = []
    for onnx in sorted(directory.glob(pattern)) if directory.is_dir() else []:
        sidecar = Path(f"{onnx}.json")
        if onnx.name.endswith(VARIANTS) or not sidecar.is_file():
            continue
        kind = read_json(sidecar, "ONNX sidecar").get("kind", "unknown")
        targets.append(Target(onnx.name[:-len(".onnx")], onnx, kind, origin))
    return targets


def onnx_files(targets: List[Target]) -> List[Path]:
    """Every graph to parse-check: each target's and its FP16 and Q/DQ variants present."""
    files = []
    for t in targets:
        files += [t.onnx] + [t.variant(s) for s in VARIANTS if t.variant(s).is_file()]
    return files


class DeviceCheck:
    """The step list for this checkout and the state steps share while it runs."""

    def __init__(self, out: Path, models_dir: Optional[Path], fixtures_dir: Path = FIXTURES,
                 python: str = sys.executable, suite_dir: Path = ROOT / "results" / "suite"):
        self.out = out
        self.suite_dir = suite_dir
        self.python = python
        self.found: Dict[str, Any] = {}  # the versions worker's answer
        self.engines: Dict[str, Path] = {}  # "<target>-<precision>" -> plan, once built
        fixtures = find_targets(fixtures_dir, "tiny_*.onnx", "fixture")
        models = find_targets(models_dir, "*.onnx", "model") if models_dir else []
        self.targets = fixtures + models
        self.steps = self._plan(fixtures, models)

    # -- the plan ---------------------------------------------------------------------------
    def _plan(self, fixtures: List[Target], models: List[Target]) -> List[Step]:
        hw = ("tensorrt", "gpu")
        steps = [Step("versions", self._versions, (), 60),
                 Step("tensorrt", self._tensorrt, ("versions",), 5),
                 Step("gpu", self._gpu, ("versions",), 5)]
        files = onnx_files(self.targets)
        steps += [Step(f"parse-table-{_stem(f)}", functools.partial(self._parse_table, f), (), 30)
                  for f in files]
        steps += [Step(f"parse-trt-{_stem(f)}", functools.partial(self._parse_trt, f), hw, 60)
                  for f in files]
        steps += [Step(f"onnxruntime-{t.name}", functools.partial(self._onnxruntime, t),
                       ("versions",), 90) for t in fixtures if t.reference]
        steps += self._model_steps(fixtures, hw)
        steps += [Step("triton", self._triton, (), 240), Step("regress", self._regress, (), 120)]
        return steps + self._model_steps(models, hw)

    def _model_steps(self, targets: List[Target], hw) -> List[Step]:
        steps = []
        for t in targets:
            steps += [Step(f"build-{t.name}-{p}", functools.partial(self._build, t, p), hw, 180)
                      for p in PRECISIONS]
        for t in targets:
            run = self._classify if t.kind == "classifier" else self._generate
            verb = "classify" if t.kind == "classifier" else "generate"
            for p in PRECISIONS:
                built = (f"build-{t.name}-{p}",)
                steps += [Step(f"{verb}-{t.name}-{p}", functools.partial(run, t, p), built, 90),
                          Step(f"bench-{t.name}-{p}", functools.partial(self._bench, t, p),
                               built, 90)]
        return steps

    def info(self) -> Dict[str, Any]:
        """What the report records beside the steps."""
        return {"versions": self.found.get("versions", {}),
                "version_errors": self.found.get("errors", {}),
                "gpu": self.found.get("gpu"), "device": self.found.get("device"),
                "targets": [{"name": t.name, "onnx": str(t.onnx), "kind": t.kind,
                             "origin": t.origin} for t in self.targets],
                "tolerances": compare.TOLERANCES, "build_opt_level": BUILD_OPT_LEVEL}

    @property
    def trt_version(self) -> str:
        return str(self.found["versions"]["tensorrt"])

    def _worker(self, ctx: StepContext, command: str, *args: str) -> Any:
        output = self.out / "work" / f"{ctx.name}.json"
        output.parent.mkdir(parents=True, exist_ok=True)
        run_command(ctx, [self.python, "-m", WORKERS, command, *args, "--output", str(output)])
        return read_json(output, f"{command} worker output")

    # -- versions and probes ----------------------------------------------------------------
    def _versions(self, ctx: StepContext) -> str:
        self.found = self._worker(ctx, "versions")
        v, state = self.found["versions"], (self.found["device"] or {}).get("device_state") or {}
        jetson = self.found["device"].get("jetson") or {}
        where = (f"{jetson.get('module')} JetPack {jetson.get('jetpack')}, clocks locked: "
                 f"{state.get('clocks_locked')}" if jetson else f"{state.get('machine')}")
        return (f"TensorRT {v['tensorrt']}, CUDA {v['cuda']}, pycuda {v['pycuda']}, Polygraphy "
                f"{v['polygraphy']}, ONNX Runtime {v['onnxruntime']}, Python {v['python']}, "
                f"numpy {v['numpy']}; {where}")

    def _tensorrt(self, ctx: StepContext) -> str:
        if self.found["versions"].get("tensorrt") is None:
            raise SkipStep(f"TensorRT is not installed here ({self.found['errors']['tensorrt']})")
        return f"TensorRT {self.trt_version}"

    def _gpu(self, ctx: StepContext) -> str:
        gpu, why = self.found.get("gpu"), self.found.get("gpu_error") or ""
        if gpu is None and self.found.get("pycuda_missing"):
            raise SkipStep(f"no GPU through pycuda: {why}")
        if gpu is None:
            raise ToolkitError(why)
        return f"{gpu['name']} ({gpu['compute_capability']}, {gpu['memory_mib']} MiB)"

    # -- parse checks -----------------------------------------------------------------------
    def _parse_table(self, onnx: Path, ctx: StepContext) -> str:
        return compare.table_summary(onnx)

    def _parse_trt(self, onnx: Path, ctx: StepContext) -> str:
        found = self._worker(ctx, "parse", "--onnx", str(onnx))
        return compare.parser_against_table(onnx, self.trt_version, found)

    # -- ONNX Runtime against the committed references ---------------------------------------
    def _onnxruntime(self, target: Target, ctx: StepContext) -> str:
        if self.found["versions"].get("onnxruntime") is None:
            raise SkipStep(f"ONNX Runtime is not installed here "
                           f"({self.found['errors']['onnxruntime']})")
        run = self._classify_run if target.kind == "classifier" else self._generate_run
        return run(target, str(target.onnx), "onnxruntime", ctx)

    # -- engines ----------------------------------------------------------------------------
    def _build(self, target: Target, precision: str, ctx: StepContext) -> str:
        compare.check_target_version(target.onnx, self.trt_version)
        plan = self.out / "engines" / f"{target.name}.{precision}.plan"
        args = [self.python, "-m", "engines.build", "--onnx", str(target.onnx), "--precision",
                precision, "--output", str(plan), "--timing-cache",
                str(self.out / "engines" / "timing.cache")]
        if trt_info.has_builder_optimization_level(self.trt_version):
            args += ["--opt-level", str(BUILD_OPT_LEVEL)]
        args += self._precision_args(target, precision, ctx)
        run_command(ctx, args)
        manifest = read_json(f"{plan}.json", "engine manifest")
        self.engines[f"{target.name}-{precision}"] = plan
        network = manifest.get("network") or {}
        return (f"{plan.name}: {manifest['precision_plan']['summary']}"
                + (f", from {Path(network['file']).name} ({network.get('mode')})"
                   if network.get("file") else "") + f", {manifest['build_seconds']:.1f} s")

    def _precision_args(self, target: Target, precision: str, ctx: StepContext) -> List[str]:
        version = self.trt_version
        if precision == "fp16" and not trt_info.has_precision_flags(version):
            fp16 = target.variant(".fp16.onnx")
            if not fp16.is_file():
                raise SkipStep(f"TensorRT {version} builds fp16 strongly typed from {fp16.name}, "
                               "which is not there (python -m calibration.fp16 makes it)")
            return ["--fp16-onnx", str(fp16)]
        if precision != "int8":
            return []
        qdq = target.variant(".qdq.onnx")
        if qdq.is_file():
            return ["--int8-source", "qdq", "--qdq-onnx", str(qdq)]
        if target.origin == "fixture" and trt_info.has_implicit_int8(version):
            calib = self.out / "calibration" / f"{target.name}.calib.npz"
            run_command(ctx, [self.python, "jetson/gpu_check.py", "calib-set", "--onnx",
                              str(target.onnx), "--output", str(calib)])
            return ["--int8-source", "calibrate", "--calib", str(calib), "--calib-cache",
                    str(calib.with_suffix(".cache"))]
        raise SkipStep(f"no {qdq.name} (make calibrate makes it)"
                       + ("" if trt_info.has_implicit_int8(version) else
                          f"; TensorRT {version} has no implicit INT8 calibration"))

    def _plan_of(self, target: Target, precision: str) -> Path:
        plan = self.engines.get(f"{target.name}-{precision}")
        if plan is None:  # the runner skips a step whose build failed; this is a safeguard
            raise SkipStep(f"no {precision} engine of {target.name}")
        return plan

    def _classify(self, target: Target, precision: str, ctx: StepContext) -> str:
        return self._classify_run(target, str(self._plan_of(target, precision)), precision, ctx)

    def _classify_run(self, target: Target, model: str, precision: str,
                      ctx: StepContext) -> str:
        texts, expected = compare.classifier_reference(target, self._classify_cli, ctx)
        got = self._classify_cli(model, texts, ctx)
        return compare.check_probabilities(got, expected, precision)

    def _classify_cli(self, model: str, texts, ctx: StepContext):
        """texts: a list of texts, or the Path of a feature classifier's windows (.npz)."""
        inputs = ["--features", str(texts)] if isinstance(texts, Path) else list(texts)
        out = run_command(ctx, [self.python, "runtime/classify.py", "--model", model, "--json",
                                *inputs])
        return compare.probabilities_from_cli(out)

    def _generate(self, target: Target, precision: str, ctx: StepContext) -> str:
        plan = self._plan_of(target, precision)
        problem = compare.kv_alignment_problem(plan)
        if problem:
            raise SkipStep(problem)
        return self._generate_run(target, str(plan), precision, ctx)

    def _generate_run(self, target: Target, model: str, precision: str,
                      ctx: StepContext) -> str:
        prompts, expected = compare.decoder_reference(target, self._generate_worker, ctx)
        got = self._generate_worker(model, prompts, ctx)
        return compare.check_tokens(got, expected, precision)

    def _generate_worker(self, model: str, prompts: List[Dict[str, Any]], ctx: StepContext):
        path = self.out / "work" / f"{ctx.name}.prompts.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(prompts), encoding="utf-8")
        return self._worker(ctx, "generate", "--model", model, "--prompts", str(path))

    def _bench(self, target: Target, precision: str, ctx: StepContext) -> str:
        plan = self._plan_of(target, precision)
        problem = compare.kv_alignment_problem(plan) if target.kind == "decoder" else None
        if problem:
            raise SkipStep(problem)
        output = self.out / "bench" / f"{target.name}.{precision}.json"
        shape = (["--seq", "16", "--iterations", "20"] if target.kind == "classifier" else
                 ["--seq", "8", "--new-tokens", "16", "--iterations", "3"])
        run_command(ctx, [self.python, "runtime/bench.py", "--engine", str(plan), "--batch", "1",
                          "--warmup", "2", *shape, "--output", str(output)])
        return compare.bench_summary(read_json(output, "bench output"))

    # -- Triton and the regression check ----------------------------------------------------
    def _triton(self, ctx: StepContext) -> str:
        server = compare.find_tritonserver(os.environ)
        if self.found.get("versions", {}).get("tritonclient") is None:
            raise SkipStep("tritonclient is not installed (pip install -r requirements/serve.txt)")
        target, imdb, stories = self._triton_models(server)
        repo, pidfile = self.out / "triton_models", self.out / "triton.pid"
        run_command(ctx, [self.python, "-m", "triton_repo.build", "--target", target,
                          "--output", str(repo), "--imdb", str(imdb), "--stories", str(stories),
                          "--force"])
        if pidfile.exists():  # a server left by an earlier run is not ours to stop
            pidfile.unlink()
        try:
            run_command(ctx, ["bash", "jetson/run_triton.sh", "--background", str(pidfile),
                              str(repo)])
            http = f"127.0.0.1:{os.environ.get('TRITON_HTTP_PORT', '8000')}"
            grpc = f"127.0.0.1:{os.environ.get('TRITON_GRPC_PORT', '8001')}"
            label = run_command(ctx, [self.python, "-m", "triton_repo.client", "classify",
                                      "--url", http, "--json", "great film"])
            story = run_command(ctx, [self.python, "-m", "triton_repo.client", "generate",
                                      "--url", grpc, "--prompt", "the cat sat on",
                                      "--max-new-tokens", "8"])
        finally:
            stop_server(pidfile)
        return (f"{server} ({target} repository): classify {last_line(label)}; "
                f"stream {last_line(story)!r}")

    def _triton_models(self, server: str):
        """(repository target, --imdb, --stories): engines where Triton has its TensorRT
        backend, else the ONNX fixtures through the python backend."""
        names = {t.name: t for t in self.targets}
        if "tiny_classifier" not in names or "tiny_decoder_long" not in names:
            raise SkipStep("the tiny_classifier / tiny_decoder_long fixtures are not there")
        if not compare.has_tensorrt_backend(os.environ):
            return "cpu", names["tiny_classifier"].onnx, names["tiny_decoder_long"].onnx
        plans = [self.engines.get(f"{n}-fp32") for n in ("tiny_classifier", "tiny_decoder_long")]
        if None in plans:
            raise SkipStep(f"{server} has the TensorRT backend, but the fp32 engines of "
                           "tiny_classifier and tiny_decoder_long were not both built")
        return "jetson", plans[0], plans[1]

    def _regress(self, ctx: StepContext) -> str:
        reports = sorted(self.suite_dir.glob("*.json"))
        if not reports:
            raise SkipStep(f"no suite report in {self.suite_dir}: make bench-all MODEL=imdb "
                           "(and make baseline) first")
        notes = []
        for report in reports:
            out = run_command(ctx, [self.python, "-m", "benchmarks.regress", "--report",
                                    str(report)])
            notes.append(f"{report.stem}: {last_line(out)}")
        return "; ".join(notes)


def _stem(onnx: Path) -> str:
    return onnx.name[:-len(".onnx")]


def stop_server(pidfile: Path, wait_s: float = 20.0) -> None:
    """SIGTERM the server run_triton.sh left running (its pid in ``pidfile``), then SIGKILL."""
    if not pidfile.is_file():
        return
    try:
        pid = int(pidfile.read_text().strip())
    except ValueError:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)

