"""benchmarks.peers and its worker on a tiny random Llama: the worker runs ours and transformers
as separate processes and both give the same greedy tokens with one step time per token; the
report's figures come from those runs. Optimum and onnxruntime-genai need their own venvs and
are only checked to become rows with a reason when absent."""
from __future__ import annotations

import pytest

pytest.importorskip("transformers")
from hf_tiny import make_folder  # noqa: E402

from benchmarks import peers  # noqa: E402

PROMPT = [5, 17, 42, 99, 7]
TOKENS = 40


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from export.hf import export_hf

    root = tmp_path_factory.mktemp("peers")
    folder = make_folder(root, "llama")
    onnx_path = export_hf(folder, root / "llama.onnx", max_batch=1, greedy_tokens=20)
    return folder, onnx_path


def _run(peer, model):
    import sys

    return peers.run_worker(sys.executable, ["run", peer, str(model), "--tokens", str(TOKENS),
                                             "--threads", "1", "--prompt",
                                             ",".join(map(str, PROMPT))])


def test_worker_ours_and_transformers_agree_token_for_token(llama):
    folder, onnx_path = llama
    ours, theirs = _run("ours", onnx_path), _run("transformers", folder)
    assert len(ours["tokens"]) == len(theirs["tokens"]) == TOKENS
    assert ours["tokens"] == theirs["tokens"]
    assert len(set(ours["tokens"])) > 3  # a random model that repeats one token proves little
    for result in (ours, theirs):
        assert len(result["step_ms"]) == len(result["positions"]) == TOKENS - 1
        assert result["positions"][0] == len(PROMPT)
        assert all(ms > 0 for ms in result["step_ms"])


def test_report_rows_and_absent_peers(llama):
    folder, onnx_path = llama
    models = {"llama": {"parameters": 1, "prompt": PROMPT,
                        "artifacts": {"ours": str(onnx_path), "transformers": str(folder)},
                        "absent": {"optimum": "no venv given (--optimum-python)",
                                   "genai": "no venv given (--genai-python)"},
                        "graph_nodes": {"ours": 123}}}
    runs = {"llama": {"ours": [_run("ours", onnx_path)] * 2,
                      "transformers": [_run("transformers", folder)]}}
    report = peers.build_report(models, runs, TOKENS, rounds=2, threads=1)
    rows = {row["peer"]: row for row in report["rows"]}
    assert rows["optimum"]["status"] == "not available"
    assert "--optimum-python" in rows["optimum"]["reason"]
    assert rows["ours"]["equal_prefix_vs_transformers"] == TOKENS
    assert rows["transformers"]["x_transformers"] == pytest.approx(1.0)
    assert rows["ours"]["tokens_per_s"]["n"] == len(rows["ours"]["tokens_per_s_by_round"]) == 2
    assert rows["ours"]["ms_near"]["10"] is not None  # steps at positions 5..43 include 10
    table = peers.markdown(report)
    assert "| llama | genai | not available: no venv given" in table
    assert f"{TOKENS}/{TOKENS}" in table
    assert rows["ours"]["graph_nodes"] == 123 and f"{TOKENS}/{TOKENS} | 123 |" in table


def test_node_count_is_after_onnxruntime_optimizations(llama, tmp_path):
    import onnx

    _, onnx_path = llama
    exported = len(onnx.load(str(onnx_path)).graph.node)
    optimized = peers.optimized_node_count(onnx_path)
    # ORT folds the exporter's shape arithmetic and fuses each RMSNorm into one node
    assert 0 < optimized < exported
    assert peers.optimized_node_count(tmp_path) is None  # a folder without model.onnx


def test_worker_failure_is_one_line(tmp_path):
    import sys

    with pytest.raises(peers.ToolkitError, match="ours run failed: .*"):
        peers.run_worker(sys.executable, ["run", "ours", str(tmp_path / "missing.onnx"),
                                          "--tokens", "4", "--prompt", "1,2"])


def test_common_prefix():
    from benchmarks.measure import common_prefix

    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
