"""A bounded load test of a running tritonserver on loopback: classify clients and streams at once.

    python -m benchmarks.triton_load --http-url 127.0.0.1:8000 --grpc-url 127.0.0.1:8001 \
        --clients 8 --streams 2 --duration 20 --server-pid $(cat triton.pid)

``--clients`` threads each hold one connection and send one review at a time through the
``imdb`` ensemble (batch 1 per request, as a single-stream edge client does: batching them is
the server's dynamic batcher's job) for ``--duration`` seconds; at the same time ``--streams``
threads each stream stories from ``tinystories_generate`` over gRPC, one after another, until
the deadline. Each thread connects and checks its model once, before the clock starts; a
request's time, and a stream's time to first token, run from sending it. Every call has a
timeout (``--timeout``), so a stalled server fails the run instead of hanging its threads.
Reported: requests/s and p50/p99/mean latency of the classify requests, streams and tokens/s
with the time to first token, every failed request (a failure is never retried or hidden: any
makes the command exit 2), and the resident memory of the server and of its python backend
stubs (``/proc/<pid>/status`` VmRSS of the server and its descendants) before and after. In
container mode run_triton.sh's pid is the docker client's: pass ``--container NAME`` instead
(a container client's pid is refused). Texts are generated review-like ones of 5..120 words,
or ``--reviews FILE`` (real reviews). ``run_load`` is the library entry the tests call.
"""
from __future__ import annotations

if __package__ in (None, ""):  # run by path: the repository root replaces benchmarks/
    import os
    import sys

    _HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    sys.path.insert(0, os.path.dirname(_HERE))

import functools
import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import click

from common.errors import ToolkitError, exit_on_toolkit_error
from common.fileio import atomic_write_json

REVIEW_WORDS = ("the film was a great story with good acting and a bad ending not very "
                "awful loved hated boring wonderful plot actors scenes music slow fast "
                "funny sad long short").split()


def read_texts(path: str, limit: int = 1000) -> List[str]:
    """Texts of a ``.jsonl`` of ``{"text": ...}`` lines (the IMDB split files), or one per line."""
    p = Path(path)
    if not p.is_file():
        raise ToolkitError(f"--reviews {p}: not found")
    texts: List[str] = []
    with open(p, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if len(texts) >= limit:
                break
            if not line.strip():
                continue
            if p.suffix == ".jsonl":
                try:
                    texts.append(str(json.loads(line)["text"]))
                except (ValueError, KeyError, TypeError):
                    raise ToolkitError(f"--reviews {p}:{number}: expected a JSON object with "
                                       f"a 'text' field") from None
            else:
                texts.append(line.strip())
    if not texts:
        raise ToolkitError(f"--reviews {p}: no texts")
    return texts


def sample_reviews(n: int = 64, seed: int = 0) -> List[str]:
    """Review-like texts of 5..120 words, so requests differ in length as real ones do."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(REVIEW_WORDS) for _ in range(rng.randint(5, 120)))
            for _ in range(n)]


# -- server memory ----------------------------------------------------------------------------
def _rss_kib(pid: int) -> Optional[int]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# Processes that stand for a server they do not contain: a container client (the pid that
# run_triton.sh prints in container mode) and a container's init (docker run --init).
CONTAINER_CLIENTS = ("docker", "podman", "nerdctl")
INIT_PROCESSES = ("docker-init", "tini", "catatonit", "dumb-init")


def _comm(pid: int) -> Optional[str]:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _children(pid: int) -> List[int]:
    children: List[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return children


def _descendants(pid: int) -> List[int]:
    found: List[int] = []
    todo = [pid]
    while todo:
        children = _children(todo.pop())
        found.extend(children)
        todo.extend(children)
    return found


def server_process(pid: int, what: str = "--server-pid") -> int:
    """The tritonserver process for ``pid``: itself, or the only child of a container's init.
    ToolkitError for a container client: its memory is not the server's (the server runs in
    the container, under the container runtime, not under the client)."""
    comm = _comm(pid)
    if comm is None:
        raise ToolkitError(f"{what} {pid}: no /proc/{pid} (not running here?)")
    if comm in CONTAINER_CLIENTS:
        raise ToolkitError(f"{what} {pid} is the {comm} client of a container, not tritonserver: "
                           f"pass --container NAME (docker ps) to measure the server inside it")
    if comm in INIT_PROCESSES:
        children = _children(pid)
        if len(children) == 1:
            return children[0]
    return pid


def container_pid(container: str, docker: str = "docker") -> int:
    """The host pid of ``container``'s server: ``docker inspect -f {{.State.Pid}}``, past its
    init process."""
    import subprocess

    try:
        done = subprocess.run([docker, "inspect", "-f", "{{.State.Pid}}", container],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolkitError(f"--container {container}: {docker} inspect: {exc}") from None
    answer = (done.stdout.strip() or done.stderr.strip()).splitlines()
    if done.returncode != 0 or not answer or not answer[0].isdigit():
        raise ToolkitError(f"--container {container}: {docker} inspect: "
                           f"{answer[0] if answer else f'exit {done.returncode}'}")
    if int(answer[0]) == 0:
        raise ToolkitError(f"--container {container}: not running ({docker} inspect: pid 0)")
    return server_process(int(answer[0]), f"--container {container}: pid")


def server_memory(pid: Optional[int]) -> Optional[Dict[str, float]]:
    """RSS (MiB) of tritonserver ``pid`` and of its descendants (the python backend stubs)."""
    if pid is None:
        return None
    server = _rss_kib(pid)
    if server is None:
        raise ToolkitError(f"--server-pid {pid}: no /proc/{pid}/status (not running here?)")
    stubs = [kib for kib in (_rss_kib(child) for child in _descendants(pid)) if kib is not None]
    return {"server_rss_mib": server / 1024, "stubs_rss_mib": sum(stubs) / 1024,
            "stub_processes": len(stubs), "total_rss_mib": (server + sum(stubs)) / 1024}


# -- workers ----------------------------------------------------------------------------------
class _Tally:
    """What the workers record; appends from threads (list.append is atomic under the GIL)."""

    def __init__(self) -> None:
        self.latencies_ms: List[float] = []  # one per successful classify request
        self.failures: List[str] = []
        self.streams = 0
        self.tokens = 0
        self.first_token_ms: List[float] = []  # from sending the request (sent_at)
        self.stream_failures: List[str] = []


class _Clock:
    """The shared start: each worker connects and checks its model in its own thread (an HTTP
    client belongs to the thread that made it: gevent), then waits at the barrier; the clock
    starts once all are connected, so no request pays for connecting and checking."""

    def __init__(self, workers: int, duration_s: float) -> None:
        self.duration_s = duration_s
        self.start = self.deadline = 0.0
        self.connect_failures: List[str] = []
        self.barrier = threading.Barrier(workers, action=self._start)

    def _start(self) -> None:  # run once, by the last worker to arrive, before any goes on
        self.start = time.perf_counter()
        self.deadline = self.start + (0.0 if self.connect_failures else self.duration_s)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _worker(make_client, loop, clock: _Clock, *args) -> None:
    """Connect (before the clock), wait for all, run ``loop(client, *args, deadline)``, close.

    A worker that fails to connect still reaches the barrier (the run then stops at once); one
    stopped by anything else (KeyboardInterrupt, SystemExit) before it gets there breaks the
    barrier, so no other worker, nor run_load, waits for it forever."""
    client = None
    arrived = False
    try:
        try:
            client = make_client()
        except Exception as exc:  # reported by run_load as one line; the run stops at once
            clock.connect_failures.append(_one_line(exc))
        clock.barrier.wait()
        arrived = True
        if client is not None:
            loop(client, *args, clock.deadline)
    except threading.BrokenBarrierError:
        pass  # another worker was stopped before the start: run_load reports it
    finally:
        if not arrived:
            clock.barrier.abort()
        if client is not None:
            client.close()


def _classify_loop(client, texts: Sequence[str], offset: int, tally: _Tally,
                   deadline: float) -> None:
    i = offset
    while time.perf_counter() < deadline:
        text = texts[i % len(texts)]
        i += 1
        start = time.perf_counter()
        try:
            (prediction,) = client.classify([text])
            if prediction.probabilities.size < 2:
                raise ToolkitError(f"PROBABILITIES of shape {prediction.probabilities.shape}")
        except Exception as exc:  # counted and reported, never hidden
            tally.failures.append(_one_line(exc))
            continue
        tally.latencies_ms.append((time.perf_counter() - start) * 1e3)


def _stream_loop(client, prompts: Sequence[str], offset: int, max_new_tokens: int,
                 tally: _Tally, deadline: float) -> None:
    from triton_repo.client import generation_inputs

    requests = [generation_inputs(prompt, max_new_tokens=max_new_tokens) for prompt in prompts]
    i = offset
    while time.perf_counter() < deadline:
        inputs = requests[i % len(requests)]
        i += 1
        first: Optional[float] = None
        tokens = 0
        try:
            for event in client.stream(inputs):
                if event.token_id is not None:
                    tokens += 1
                    if first is None:  # from the request's send (client.sent_at), no checks
                        first = (time.perf_counter() - client.sent_at) * 1e3
                if event.final and event.stop_reason not in ("eos", "max_new_tokens", "context"):
                    raise ToolkitError(f"unknown stop reason {event.stop_reason!r}")
        except Exception as exc:  # counted and reported, never hidden
            tally.stream_failures.append(_one_line(exc))
            continue
        tally.streams += 1
        tally.tokens += tokens
        if first is not None:
            tally.first_token_ms.append(first)


def run_load(http_url: str, grpc_url: str, clients: int = 8, streams: int = 2,
             duration_s: float = 20.0, protocol: str = "http", server_pid: Optional[int] = None,
             max_new_tokens: int = 64, texts: Optional[Sequence[str]] = None,
             prompts: Sequence[str] = ("Once upon a time", "The little dog", "One day, a girl"),
             wait_s: float = 30.0, timeout_s: float = 60.0) -> Dict[str, Any]:
    """Run the load for ``duration_s``; return the figures (see the module docstring)."""
    from runtime.bench import latency_stats
    from triton_repo.client import (
        CLASSIFIER_MODEL,
        GENERATOR_MODEL,
        ClassifierClient,
        StreamClient,
        wait_until_ready,
    )

    if clients < 0 or streams < 0 or clients + streams == 0:
        raise ToolkitError(f"--clients {clients} --streams {streams}: expected at least one")
    if duration_s <= 0:
        raise ToolkitError(f"--duration {duration_s}: expected seconds > 0")
    if server_pid is not None:
        server_pid = server_process(server_pid)  # not a container client; past an init
    class_url = http_url if protocol == "http" else grpc_url
    if clients:
        wait_until_ready(class_url, protocol, [CLASSIFIER_MODEL], wait_s)
    if streams:
        wait_until_ready(grpc_url, "grpc", [GENERATOR_MODEL], wait_s)
    texts = list(texts) if texts else sample_reviews()
    memory_before = server_memory(server_pid)
    tally = _Tally()
    clock = _Clock(clients + streams + 1, duration_s)
    classifier = functools.partial(ClassifierClient, class_url, protocol, timeout_s=timeout_s)
    streamer = functools.partial(StreamClient, grpc_url, timeout_s=timeout_s)
    threads = [threading.Thread(target=_worker, name=f"classify-{i}",
                                args=(classifier, _classify_loop, clock, texts, i * 7, tally))
               for i in range(clients)]
    threads += [threading.Thread(target=_worker, name=f"stream-{i}",
                                 args=(streamer, _stream_loop, clock, list(prompts), i,
                                       max_new_tokens, tally))
                for i in range(streams)]
    for thread in threads:
        thread.start()
    try:
        clock.barrier.wait()  # every worker connected (or failed to)
    except threading.BrokenBarrierError:
        for thread in threads:
            thread.join()
        raise ToolkitError("a load worker was stopped before the start (interrupted while "
                           "connecting); no figures") from None
    for thread in threads:
        thread.join()
    if clock.connect_failures:
        raise ToolkitError(f"{len(clock.connect_failures)} of {clients + streams} workers "
                           f"could not connect: {clock.connect_failures[0]}")
    elapsed = time.perf_counter() - clock.start  # includes the last requests after the deadline
    memory_after = server_memory(server_pid)
    report: Dict[str, Any] = {
        "duration_s": elapsed, "clients": clients, "streams": streams, "protocol": protocol,
        "classify": {"requests": len(tally.latencies_ms), "failed": len(tally.failures),
                     "requests_per_s": len(tally.latencies_ms) / elapsed,
                     "failures": tally.failures[:10]},
        "generate": {"streams": tally.streams, "failed": len(tally.stream_failures),
                     "tokens": tally.tokens, "tokens_per_s": tally.tokens / elapsed,
                     "max_new_tokens": max_new_tokens, "failures": tally.stream_failures[:10]},
        "memory_before": memory_before, "memory_after": memory_after,
    }
    if tally.latencies_ms:
        report["classify"]["latency"] = latency_stats(tally.latencies_ms)
    if tally.first_token_ms:
        report["generate"]["first_token"] = latency_stats(tally.first_token_ms)
    return report


def summary_lines(report: Dict[str, Any]) -> List[str]:
    c, g = report["classify"], report["generate"]
    lines = [f"load: {report['clients']} classify clients ({report['protocol']}) + "
             f"{report['streams']} gRPC streams for {report['duration_s']:.1f} s"]
    if report["clients"]:
        lat = c.get("latency") or {}
        lines.append(f"classify: {c['requests']} requests, {c['requests_per_s']:.1f} req/s, "
                     f"p50 {lat.get('p50_ms', float('nan')):.2f} ms, "
                     f"p99 {lat.get('p99_ms', float('nan')):.2f} ms, failed {c['failed']}")
    if report["streams"]:
        ftl = g.get("first_token") or {}
        lines.append(f"generate: {g['streams']} streams, {g['tokens']} tokens, "
                     f"{g['tokens_per_s']:.1f} tokens/s, first token p50 "
                     f"{ftl.get('p50_ms', float('nan')):.1f} ms, failed {g['failed']}")
    for when in ("before", "after"):
        mem = report[f"memory_{when}"]
        if mem:
            lines.append(f"server memory {when}: tritonserver {mem['server_rss_mib']:.1f} MiB + "
                         f"{mem['stub_processes']} stubs {mem['stubs_rss_mib']:.1f} MiB = "
                         f"{mem['total_rss_mib']:.1f} MiB")
    for failure in c["failures"] + g["failures"]:
        lines.append(f"failure: {failure}")
    return lines


@click.command()
@click.option("--http-url", default="127.0.0.1:8000", show_default=True)
@click.option("--grpc-url", default="127.0.0.1:8001", show_default=True)
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="http",
              show_default=True, help="Protocol of the classify clients (streams are gRPC).")
@click.option("--clients", default=8, show_default=True, help="Concurrent classify clients.")
@click.option("--streams", default=2, show_default=True, help="Concurrent generation streams.")
@click.option("--duration", "duration_s", default=20.0, show_default=True, help="Seconds.")
@click.option("--max-new-tokens", default=64, show_default=True, help="Tokens per stream.")
@click.option("--reviews", type=click.Path(dir_okay=False), default=None,
              help="Texts to send: a .jsonl with a 'text' field (e.g. the IMDB test split) "
                   "or one per line; its first 1000 (default: generated review-like texts).")
@click.option("--server-pid", type=int, default=None,
              help="tritonserver's pid (run_triton.sh prints it): report its memory.")
@click.option("--container", default=None,
              help="Instead of --server-pid in container mode: the container's name or id "
                   "(docker ps); its server's pid comes from `docker inspect`.")
@click.option("--docker", default=lambda: os.environ.get("TRITON_DOCKER", "docker"),
              show_default="$TRITON_DOCKER or docker", help="The container client.")
@click.option("--timeout", "timeout_s", default=60.0, show_default=True,
              help="Seconds a call, or the wait for a stream's next token, may take.")
@click.option("--wait", "wait_s", default=30.0, show_default=True,
              help="Seconds to wait for the server and models to be ready first.")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="Write the figures as JSON here.")
@exit_on_toolkit_error
def main(http_url: str, grpc_url: str, protocol: str, clients: int, streams: int,
         duration_s: float, max_new_tokens: int, reviews: Optional[str],
         server_pid: Optional[int], container: Optional[str], docker: str, timeout_s: float,
         wait_s: float, output: Optional[str]) -> None:
    """Load a running tritonserver with classify clients and streams; print the figures."""
    if container and server_pid is not None:
        raise ToolkitError(f"--server-pid {server_pid} --container {container}: give one")
    if container:
        server_pid = container_pid(container, docker)
    report = run_load(http_url, grpc_url, clients, streams, duration_s, protocol, server_pid,
                      max_new_tokens, texts=read_texts(reviews) if reviews else None,
                      wait_s=wait_s, timeout_s=timeout_s)
    for line in summary_lines(report):
        click.echo(line)
    if output:
        atomic_write_json(output, report)
        click.echo(f"wrote {output}")
    failed = report["classify"]["failed"] + report["generate"]["failed"]
    if failed:
        raise ToolkitError(f"{failed} failed requests (listed above)")
    if clients and not report["classify"]["requests"]:
        raise ToolkitError("no classify request completed")
    if streams and not report["generate"]["streams"]:
        raise ToolkitError("no stream completed")
    click.echo(json.dumps({"requests_per_s": round(report["classify"]["requests_per_s"], 2),
                           "failed": failed}))


if __name__ == "__main__":
    main()
