"""Spies on tritonclient's real InferenceServerClient classes for the client tests.

``track_clients`` records every client made (strong references: none is closed by the garbage
collector meanwhile, so a leak shows) and whether ``close`` was called on it. ``report_version``
changes only the ``version`` field of the server's real metadata answer (``/v2``, gRPC
ServerMetadata), so the real 2.51 server takes the client down an older server's path: what the
server then receives (e.g. a stream request without ``enable_empty_final_response``) is real.
"""
from __future__ import annotations

from typing import Any, Dict, List


def client_classes():
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient, grpcclient.InferenceServerClient


def track_clients(monkeypatch) -> List[Any]:
    made: List[Any] = []
    for cls in client_classes():
        init, close = cls.__init__, cls.close

        def tracking_init(self, *args, _init=init, **kwargs):
            self._test_closed = False
            _init(self, *args, **kwargs)
            made.append(self)

        def tracking_close(self, *args, _close=close, **kwargs):
            self._test_closed = True
            return _close(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", tracking_init)
        monkeypatch.setattr(cls, "close", tracking_close)
    return made


def report_version(monkeypatch, version: str) -> None:
    for cls in client_classes():
        real = cls.get_server_metadata

        def metadata(self, *args, _real=real, **kwargs) -> Dict[str, Any]:
            answer = _real(self, *args, **kwargs)
            answer["version"] = version
            return answer

        monkeypatch.setattr(cls, "get_server_metadata", metadata)


def record_stream_flags(monkeypatch) -> List[bool]:
    """The ``enable_empty_final_response`` of every stream request sent (tritonclient adds the
    ``triton_enable_empty_final_response`` request parameter only when it is True)."""
    _, grpc_cls = client_classes()
    real = grpc_cls.async_stream_infer
    flags: List[bool] = []

    def spying(self, *args, **kwargs):
        flags.append(bool(kwargs.get("enable_empty_final_response", False)))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(grpc_cls, "async_stream_infer", spying)
    return flags
