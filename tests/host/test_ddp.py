"""Training on 2 CPU ranks with torchrun (gloo): the same result as one process, rank-0-only
writes, kill -9 of a rank then --resume, and one-line errors for bad setups.

Each torchrun launch starts two Python processes (a few seconds here); NCCL/GPU paths are not
exercised (no GPU in CI)."""
from __future__ import annotations

import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from common.errors import ToolkitError
from train import distributed, imdb
from train.checkpoint import load_checkpoint
from train.model import ClassifierConfig
from train.trainer import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--data", "sample", "--limit", "500", "--val-size", "50", "--d-model", "16",
        "--n-layers", "1", "--n-heads", "2", "--d-ff", "32", "--max-seq-len", "64",
        "--vocab-size", "300", "--threads", "1", "--batch-size", "8", "--lr", "1e-2",
        "--warmup-steps", "10"]
# Measured on 2 CPU cores (gloo, 2 ranks, fp32, 2 epochs = 114 steps at lr 1e-2): train losses
# differ from one process by 1.1e-8, validation losses by 0, weights by at most 2.8e-6 (the
# order of float sums only), but for the attention's key bias (see _max_weight_diff).
WEIGHT_TOL, LOSS_TOL = 2e-5, 1e-6
LAUNCH_TIMEOUT_S = 240

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with gloo",
)


def _env():
    env = dict(os.environ, DIST_TIMEOUT_S="60", OMP_NUM_THREADS="1", WANDB_DISABLED="true",
               PYTHONPATH=str(ROOT))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _command(out: Path, *extra: str, ranks: int = 2):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc_per_node", str(ranks)] if ranks > 1 else [sys.executable])
    return [*launcher, "-m", "train.imdb", *TINY, "--out-dir", str(out), *extra]


def _run(out: Path, *extra: str, ranks: int = 2) -> subprocess.CompletedProcess:
    result = subprocess.run(_command(out, *extra, ranks=ranks), cwd=ROOT, env=_env(),
                            capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def _weights(path: Path):
    return load_checkpoint(path).model.state_dict()


def _max_weight_diff(a: Path, b: Path, skip_key_bias: bool = False) -> float:
    """Largest |difference| of two checkpoints' weights. skip_key_bias: leave out the key part of
    each attention bias, whose true gradient is zero (softmax ignores a shift shared by all
    keys): its gradient is rounding noise that Adam scales up to full steps (measured 1.7e-4)."""
    wa, wb = _weights(a), _weights(b)
    worst = 0.0
    for name in wa:
        diff = (wa[name] - wb[name]).abs()
        if skip_key_bias and name.endswith("attn.qkv.bias"):
            d = diff.numel() // 3
            diff = torch.cat([diff[:d], diff[2 * d:]])  # query and value biases
        worst = max(worst, float(diff.max()))
    return worst


def _history(out: Path):
    return json.loads((out / "history.json").read_text())["epochs"]


@pytest.fixture(scope="module")
def single_and_ddp(tmp_path_factory):
    """One process and 2 ranks, same global batch 8, no dropout (its draws differ by rank)."""
    base = tmp_path_factory.mktemp("ddp_equal")
    exact = ["--epochs", "2", "--dropout", "0", "--word-dropout", "0"]
    _run(base / "single", *exact, ranks=1)
    ddp = _run(base / "ddp", *exact)
    return base / "single", base / "ddp", ddp


def test_two_ranks_train_the_weights_of_one_process_with_the_same_global_batch(single_and_ddp):
    single, ddp, _ = single_and_ddp
    one, two = _history(single), _history(ddp)
    assert [r["step"] for r in one] == [r["step"] for r in two] == [57, 114]
    for a, b in zip(one, two):
        assert abs(a["train_loss"] - b["train_loss"]) < LOSS_TOL
        assert abs(a["val_loss"] - b["val_loss"]) < LOSS_TOL
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12)  # the same schedule
    assert one[-1]["train_loss"] < one[0]["train_loss"]  # it learned something
    assert _max_weight_diff(single / "last.pt", ddp / "last.pt", skip_key_bias=True) < WEIGHT_TOL


def test_only_rank_0_logs_and_the_run_dir_holds_one_set_of_files(single_and_ddp):
    _, ddp, result = single_and_ddp
    wrote = [line.strip() for line in result.stdout.splitlines() if "wrote " in line]
    assert len(wrote) == len(set(wrote)) == 6  # best, last, tokenizer, history, 2 PNGs: once
    assert result.stdout.count("classifier: ") == 1 and "2 ranks (gloo)" in result.stdout
    names = sorted(p.name for p in ddp.iterdir())
    assert names == ["accuracy_curve.png", "best.pt", "history.json", "last.pt",
                     "loss_curve.png", "tokenizer.json"]  # no temp files left by a second writer
    state = load_checkpoint(ddp / "last.pt").state
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2


def test_resuming_with_another_world_size_is_one_line(single_and_ddp):
    _, ddp, _ = single_and_ddp
    result = CliRunner().invoke(imdb.main, [*TINY, "--out-dir", str(ddp), "--epochs", "3",
                                            "--dropout", "0", "--word-dropout", "0", "--resume"])
    assert result.exit_code == 2
    assert "written by a run of 2 rank(s); resume it with 2 (this run has 1)" in result.output


def test_masked_lm_pretraining_under_torchrun_is_refused_in_one_line(tmp_path):
    """Its token-mean loss is not the example-weighted DDP average (and an empty shard is NaN):
    2 real gloo ranks stop before reading any data, each with the option and the workaround."""
    result = subprocess.run(_command(tmp_path / "pre", "--pretrain-epochs", "1"), cwd=ROOT,
                            env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert result.returncode != 0
    errors = [line for line in (result.stdout + result.stderr).splitlines()
              if "error: --pretrain-epochs 1 under torchrun (2 ranks)" in line]
    # each rank refuses; torchrun may stop the other once the first has exited
    assert errors, result.stdout[-2000:] + result.stderr[-3000:]
    assert "run it without torchrun" in errors[0]
    assert f'File "{ROOT / "train"}' not in result.stderr  # torchrun's own report only
    assert not (tmp_path / "pre" / "pretrain").exists()


def _worker_pid(launcher: int, rank: int) -> int:
    """The pid of torchrun's worker process with RANK=rank (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no worker with RANK={rank} under pid {launcher}")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_kill_9_of_a_rank_stops_the_job_and_resume_finishes_like_an_uninterrupted_run(tmp_path):
    args = ["--epochs", "4", "--dropout", "0.1", "--word-dropout", "0.2"]  # per-rank RNG streams
    _run(tmp_path / "full", *args)
    out = tmp_path / "killed"
    job = subprocess.Popen(_command(out, *args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + LAUNCH_TIMEOUT_S
        while not (out / "last.pt").exists() and job.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert job.poll() is None, "the job ended before the kill: " + job.stdout.read()[-2000:]
        os.kill(_worker_pid(job.pid, 1), signal.SIGKILL)
        output, _ = job.communicate(timeout=120)  # no hang: torchrun stops the other rank
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0, output[-2000:]
    interrupted_at = load_checkpoint(out / "last.pt").state["step"]
    assert interrupted_at < 4 * 57
    resumed = _run(out, *args, "--resume")
    assert f"resumed from {out / 'last.pt'} at step {interrupted_at}" in resumed.stdout
    assert _same_but_time(out, tmp_path / "full")  # losses, accuracies, best epochs
    assert _max_weight_diff(out / "last.pt", tmp_path / "full" / "last.pt") == 0.0


def _same_but_time(a: Path, b: Path) -> bool:
    drop = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]
    return drop(_history(a)) == drop(_history(b))


# --- In-process ranks (torch.multiprocessing), to give each rank its own arguments -----------

CFG = ClassifierConfig(vocab_size=50, max_seq_len=32, d_model=16, n_layers=1, n_heads=2,
                       d_ff=32, dropout=0.0)


def _tiny_task():
    rng = random.Random(0)
    seqs = [[rng.randrange(3, 50) for _ in range(rng.randint(2, 20))] for _ in range(40)]
    labels = [int(sum(s) % 2) for s in seqs]
    return imdb.ImdbTask(seqs[:30], labels[:30], seqs[30:], labels[30:], pad_id=0)


def _rank_main(rank: int, port: int, out_dirs, lrs, errors) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      DIST_TIMEOUT_S="60")
    distributed.setup()
    cfg = TrainConfig(epochs=1, batch_size=5, lr=lrs[rank], warmup_steps=2, threads=1)
    try:
        train(_tiny_task(), CFG, cfg, Path(out_dirs[rank]), log=lambda m: None,
              checkpoint_extra={"feature_norm": {"mean": [0.5]}})
    except ToolkitError as exc:
        errors.put((rank, str(exc)))


def _spawn(out_dirs, lrs):
    ctx = torch.multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.start_processes(_rank_main, args=(port, out_dirs, lrs, errors),
                                          nprocs=2, start_method="spawn")
    found = []
    while True:
        try:
            found.append(errors.get(timeout=2))
        except queue.Empty:
            return sorted(found)


def test_rank_0_alone_writes_even_when_ranks_are_told_other_folders(tmp_path):
    # batch 5 over 30 examples: 6 global batches of 5 (3 + 2 per rank), uneven sub-batches
    errors = _spawn([str(tmp_path / "rank0"), str(tmp_path / "rank1")], [1e-2, 1e-2])
    assert errors == []
    state = load_checkpoint(tmp_path / "rank0" / "last.pt").state
    assert state["step"] == 6 and state["feature_norm"] == {"mean": [0.5]}
    assert len(state["rng_ranks"]) == 2 and not torch.equal(*[r["torch"] for r in
                                                               state["rng_ranks"]])
    assert not (tmp_path / "rank1").exists()


def test_checkpoint_extra_may_not_replace_the_trainers_keys(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=5, threads=1)
    with pytest.raises(ToolkitError, match=r"checkpoint_extra keys \['step'\]"):
        train(_tiny_task(), CFG, cfg, tmp_path, log=lambda m: None, checkpoint_extra={"step": 1})


def test_ranks_disagreeing_on_the_config_is_one_line_on_every_rank(tmp_path):
    errors = _spawn([str(tmp_path / "a"), str(tmp_path / "a")], [1e-2, 3e-3])
    assert [rank for rank, _ in errors] == [0, 1]
    for _, message in errors:
        assert "\n" not in message and "ranks disagree on the training config" in message
        assert "rank(s) [1] differ from rank 0 in train.lr (0.003 vs 0.01)" in message
    assert not (tmp_path / "a").exists()


def test_shards_are_strided_weighted_and_never_empty():
    batch = list(range(5))
    parts = [distributed.shard(batch, r, 2) for r in range(2)]
    assert parts == [([0, 2, 4], 0.6), ([1, 3], 0.4)]
    assert distributed.shard([7], 1, 2) == ([7], 0.0)  # joins the all-reduce, adds nothing
    with pytest.raises(ToolkitError, match="cannot be split"):
        distributed.shard(iter([1, 2]), 0, 2)


def test_a_backend_the_machine_lacks_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ToolkitError, match="nccl needs CUDA GPUs"):
        distributed.choose_backend("nccl")
    with pytest.raises(ToolkitError, match="expected nccl or gloo"):
        distributed.choose_backend("mpi")
    assert distributed.choose_backend("") == "gloo"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: False)
    with pytest.raises(ToolkitError, match="backend nccl is not available.*DIST_BACKEND=gloo"):
        distributed.choose_backend("")
