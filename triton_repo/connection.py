"""Connections to a Triton server: connect with timeouts, wait until ready, read and check the
server's version and a model, and build input tensors; every failure the user can act on is a
one-line ``ToolkitError`` naming the URL (and the model).

Servers: Triton 2.34 (23.05) and newer (``triton_repo.versions``): a client reads the server's
version once as it connects and refuses an older one naming both versions. Every call has a
timeout (``timeout_s``), so a stalled server fails a call instead of hanging it, and a
connection is closed when a check fails. tritonclient is imported inside the functions, so
``--help`` of the commands that use this works without it.
"""
from __future__ import annotations

import time
from contextlib import closing
from typing import Any, Dict, Sequence, Tuple

import numpy as np

from common.errors import ToolkitError
from triton_repo.versions import check_supported

PROTOCOLS = ("http", "grpc")
DEFAULT_URLS = {"http": "127.0.0.1:8000", "grpc": "127.0.0.1:8001"}
DEFAULT_TIMEOUT_S = 60.0  # per call (HTTP: connect and each read; gRPC: each call's deadline)


def _strip_scheme(url: str) -> str:
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            return url[len(scheme):]
    return url


def _describe(exc: BaseException) -> str:
    """One line from a tritonclient/transport exception (its messages can span lines)."""
    message = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    line = " ".join(str(message or type(exc).__name__).split())
    return line[:300]


def _transport_errors() -> tuple:
    """Exceptions that mean "the server did not answer / refused" on either protocol."""
    from tritonclient.utils import InferenceServerException

    return (InferenceServerException, OSError, ConnectionError, TimeoutError)


def _deadline(protocol: str, timeout_s: float) -> Dict[str, Any]:
    """Keyword arguments that bound one call. gRPC takes a deadline per call (without one a
    server that accepts the connection and never answers holds the call ~20 s per attempt, and
    a stalled stream forever); the HTTP client got its timeouts in ``connect``."""
    return {"client_timeout": timeout_s} if protocol == "grpc" else {}


def connect(url: str, protocol: str = "http", timeout_s: float = DEFAULT_TIMEOUT_S):
    """A tritonclient InferenceServerClient for ``url`` (host:port); nothing is sent yet.

    HTTP: ``timeout_s`` bounds connecting and each read. gRPC: pass ``_deadline(protocol,
    timeout_s)`` to each call (the gRPC client has no client-wide timeout)."""
    if protocol not in PROTOCOLS:
        raise ToolkitError(f"protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    url = _strip_scheme(url)
    if protocol == "http":
        import tritonclient.http as httpclient

        return httpclient.InferenceServerClient(url, connection_timeout=timeout_s,
                                                network_timeout=timeout_s)
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(url)


def wait_until_ready(url: str, protocol: str = "http", models: Sequence[str] = (),
                     timeout_s: float = 30.0, poll_s: float = 0.2) -> Tuple[int, int, int]:
    """Wait until the server and every model in ``models`` are ready; return the server's
    version. ToolkitError after ``timeout_s``, or at once on a server below MIN_TRITON."""
    call_s = max(0.1, min(2.0, timeout_s))  # one probe never outlasts the whole wait
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with closing(connect(url, protocol, timeout_s=call_s)) as client:
        while True:
            try:
                if client.is_server_ready(**_deadline(protocol, call_s)):
                    waiting = [m for m in models
                               if not client.is_model_ready(m, **_deadline(protocol, call_s))]
                    if not waiting:
                        return server_version(client, url, protocol, call_s)
                    last = f"model(s) {', '.join(waiting)} not ready"
                else:
                    last = "server not ready"
            except _transport_errors() as exc:
                last = _describe(exc)
            if time.monotonic() >= deadline:
                raise ToolkitError(f"triton at {url} ({protocol}) not ready after "
                                   f"{timeout_s:g} s: {last}")
            time.sleep(poll_s)


def server_version(client, url: str, protocol: str,
                   timeout_s: float = DEFAULT_TIMEOUT_S) -> Tuple[int, int, int]:
    """The server's version from its metadata (``/v2``, gRPC ServerMetadata); ToolkitError (one
    line, both versions) below ``versions.MIN_TRITON``."""
    try:
        metadata = client.get_server_metadata(as_json=True, **_deadline(protocol, timeout_s)) \
            if protocol == "grpc" else client.get_server_metadata()
    except _transport_errors() as exc:
        raise ToolkitError(f"triton at {url} ({protocol}) does not answer: {_describe(exc)} "
                           f"(is it running? jetson/run_triton.sh starts it)") from None
    try:
        return check_supported(str(metadata.get("version", "")))
    except ToolkitError as exc:
        raise ToolkitError(f"triton at {url}: {exc}") from None


def check_model(client, url: str, protocol: str, model: str,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> Dict[str, Any]:
    """The model's config as a dict; ToolkitError when the model is absent or not ready."""
    limit = _deadline(protocol, timeout_s)
    try:
        ready = client.is_model_ready(model, **limit)
    except _transport_errors() as exc:
        raise ToolkitError(f"triton at {url}: model {model!r}: {_describe(exc)}") from None
    if not ready:
        raise ToolkitError(f"triton at {url}: model {model!r} is not loaded or not ready "
                           f"(see the server log; the repository must contain it)")
    try:
        config = client.get_model_config(model, as_json=True, **limit) if protocol == "grpc" \
            else client.get_model_config(model)
    except _transport_errors() as exc:
        raise ToolkitError(f"triton at {url}: model {model!r} config: {_describe(exc)}") from None
    return config.get("config", config)


def open_checked(url: str, protocol: str, model: str, timeout_s: float = DEFAULT_TIMEOUT_S):
    """(client, server version, model config): connected, the version read once (which also
    says whether the server answers), the model checked. The client is closed when a check
    fails (else each failure left a connection open until garbage collection)."""
    client = connect(url, protocol, timeout_s)
    try:
        version = server_version(client, url, protocol, timeout_s)
        config = check_model(client, url, protocol, model, timeout_s)
    except BaseException:
        client.close()
        raise
    return client, version, config


def text_tensor(texts: Sequence[str], batched: bool = True) -> np.ndarray:
    """UTF-8 BYTES tensor: ``[n, 1]`` for a batched model, ``[1]`` for one without a batch."""
    data = np.array([t.encode("utf-8") for t in texts], dtype=np.object_)  # (n,) bytes
    return data.reshape(-1, 1) if batched else data


def make_input(protocol: str, name: str, array: np.ndarray, datatype: str):
    if protocol == "http":
        import tritonclient.http as module
    else:
        import tritonclient.grpc as module
    tensor = module.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


class _Connected:
    """A checked tritonclient client in ``self.client``; closed by ``close`` or ``with``."""
    client: Any

    def close(self) -> None:
        self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
