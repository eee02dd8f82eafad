"""Fixtures and helpers of the repository tests (tests/serving/test_repo_*.py): no server, no
torch. The tiny models are the committed ones (tests/fixtures), copied per session.

``plan_for`` writes a ``.plan`` of arbitrary bytes with a manifest from
``engines.manifest.write_manifest``: ONLY to test that the builder reads an engine's manifest
(profile, DLA core, I/O types, ONNX hash) into the configs. Nothing here runs a plan, and no
test pretends TensorRT built or ran one.

``FakePbUtils`` stands in for ``triton_python_backend_utils`` (which exists only inside
Triton's stub) to exercise the models' adapters: which responses and flags they send. What a
real server does with them is tested in tests/serving against tritonserver.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
for path in (ROOT, TESTS):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from tiny_data import copy_committed_model  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN") == "1"


@pytest.fixture(scope="session")
def classifier_onnx(tmp_path_factory) -> Path:
    """tiny_classifier.onnx: batch 1..8, seq 1..64, labels negative/positive, mean pooling."""
    return copy_committed_model("tiny_classifier", tmp_path_factory.mktemp("repo_classifier"))


@pytest.fixture(scope="session")
def decoder_onnx(tmp_path_factory) -> Path:
    """tiny_decoder.onnx: batch 1..8, context 64, vocab 300, topk 16."""
    return copy_committed_model("tiny_decoder", tmp_path_factory.mktemp("repo_decoder"))


def plan_for(model: Path, directory: Path, batch: Tuple[int, int, int] = (1, 4, 8),
             seq: Optional[Tuple[int, int, int]] = None, dla_core: Optional[int] = None,
             precision: str = "fp16", **overrides: Any) -> Path:
    """``<directory>/<name>.<precision>.plan`` (random bytes, never run) + its manifest, whose
    profiles come from engines.profiles.build_profiles on the ONNX's sidecar, as a real build
    records them. The ONNX is named by file name and copied beside the plan unless there."""
    import shutil

    from common.artifacts import load_onnx_sidecar, sidecar_path, tokenizer_path
    from common.fileio import sha256_file
    from engines.manifest import write_manifest
    from engines.profiles import build_profiles

    onnx = model
    directory.mkdir(parents=True, exist_ok=True)
    sidecar = load_onnx_sidecar(onnx)
    if onnx.parent != directory:
        for src in (onnx, sidecar_path(onnx), tokenizer_path(onnx, sidecar)):
            shutil.copy(src, directory / src.name)
        onnx = directory / onnx.name
    name = onnx.name[:-len(".onnx")]
    plan = directory / f"{name}.{precision}.plan"
    plan.write_bytes(os.urandom(4096))
    profiles = build_profiles(sidecar, batch=batch if sidecar["kind"] == "classifier" else None,
                              seq=seq)
    data = {
        "kind": sidecar["kind"], "tensorrt_version": "10.3.0.30", "precision": precision,
        "gpu": {"name": "Orin", "compute_capability": "8.7", "source": "pycuda"},
        "int8": None, "profiles": [p.to_json() for p in profiles],
        "inputs": sidecar["inputs"], "outputs": sidecar["outputs"],
        "onnx": {"path": onnx.name, "sha256": sha256_file(onnx)}, "sidecar": sidecar,
        "tokenizer": sidecar["tokenizer"],
        "build_options": {"precision": precision, "dla_core": dla_core},
        "created_at": "2025-01-01T00:00:00+00:00", **overrides,
    }
    write_manifest(plan, data)
    return plan


def read_configs(repository: Path) -> Dict[str, str]:
    """{model name: config.pbtxt text} of a built repository."""
    return {p.parent.name: p.read_text() for p in sorted(repository.glob("*/config.pbtxt"))}


def check_golden(target: str, configs: Dict[str, str]) -> None:
    """Each config equals tests/serving/golden/<target>/<model>.pbtxt (UPDATE_GOLDEN=1 rewrites
    them; review the diff)."""
    folder = GOLDEN / target
    if UPDATE_GOLDEN:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.pbtxt"):
            stale.unlink()
        for name, text in configs.items():
            (folder / f"{name}.pbtxt").write_text(text)
    golden = {p.stem: p.read_text() for p in sorted(folder.glob("*.pbtxt"))}
    assert sorted(configs) == sorted(golden)
    for name, text in configs.items():
        assert text == golden[name], f"{target}/{name}.pbtxt differs from the golden file"


# -- a stand-in for triton_python_backend_utils (adapter tests only) ---------------------------

class FakePbUtils:
    TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1

    class TritonError:
        INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

        def __init__(self, message: str, code: str = "UNKNOWN"):
            self.message, self.code = message, code

    class TritonModelException(Exception):
        pass

    class Tensor:
        def __init__(self, name: str, array):
            self._name, self._array = name, array

        def name(self) -> str:
            return self._name

        def as_numpy(self):
            return self._array

    class InferenceResponse:
        def __init__(self, output_tensors: Sequence[Any] = (), error=None):
            self.outputs = {t.name(): t.as_numpy() for t in output_tensors}
            self.error = error

    @staticmethod
    def using_decoupled_model_transaction_policy(config: Dict[str, Any]) -> bool:
        return bool((config.get("model_transaction_policy") or {}).get("decoupled"))


class FakeSender:
    """Records (response, flags) of every send; cancels after ``cancel_after`` token sends."""

    def __init__(self, cancel_after: Optional[int] = None):
        self.sent: List[Tuple[Any, int]] = []
        self.cancel_after = cancel_after

    def send(self, response=None, flags: int = 0) -> None:
        if self.sent and self.sent[-1][1] == FakePbUtils.TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            raise AssertionError("send after COMPLETE_FINAL")
        self.sent.append((response, flags))

    def is_cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.sent) >= self.cancel_after


class FakeRequest:
    def __init__(self, inputs: Dict[str, Any], parameters: Optional[Dict[str, Any]] = None,
                 sender: Optional[FakeSender] = None):
        self._inputs = inputs
        self._parameters = json.dumps(parameters or {})
        self.sender = sender or FakeSender()

    def inputs(self):
        return [FakePbUtils.Tensor(name, array) for name, array in self._inputs.items()]

    def parameters(self) -> str:
        return self._parameters

    def get_response_sender(self) -> FakeSender:
        return self.sender


def load_adapter(monkeypatch, module, config_text: str, version_dir: Path):
    """``module.TritonPythonModel`` initialised as the stub would, on a built model's config.
    ``module`` is the imported model source; its files are taken from ``version_dir``."""
    from google.protobuf import json_format

    from triton_repo.configs import from_text

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", FakePbUtils)
    monkeypatch.setattr(module, "__file__", str(version_dir / "model.py"))
    config = json_format.MessageToDict(from_text(config_text), preserving_proto_field_name=True)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config)})
    return model
