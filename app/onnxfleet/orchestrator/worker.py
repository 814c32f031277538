"""The gunicorn worker class: uvicorn (uvloop + httptools) serving the orchestrator's ASGI app."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker


class CoalescingTransport(asyncio.Transport):
    """Sends a response head and its body to the socket in one system call.

    uvicorn writes a response head and its body separately, and uvloop sends each write
    at once: two ``send`` calls per answer where one does, each a good part of a
    request's cost on loopback (see docs/orchestrator.md). A final response head (not a
    ``100 Continue``) is held until the next write, the end of the response (HEAD, empty
    body: ``HttpProtocol.on_response_complete``) or the closing of the connection.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self.transport = transport
        self.held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.held is not None:
            data, self.held = self.held + data, None
            self.transport.write(data)
        elif data[:9] == b"HTTP/1.1 " and data[9:10] != b"1":
            self.held = bytes(data)
        else:
            self.transport.write(data)

    def flush(self) -> None:
        if self.held is not None:
            data, self.held = self.held, None
            self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self.held = None
        self.transport.abort()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def is_reading(self) -> bool:
        return self.transport.is_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.transport.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + len(self.held or b"")


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a CoalescingTransport."""

    transport: CoalescingTransport

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport))

    def on_response_complete(self) -> None:
        self.transport.flush()
        super().on_response_complete()


class OrchestratorWorker(UvicornWorker):
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "uvloop",
        "http": HttpProtocol,
        "ws": "none",
        "interface": "asgi3",
        "lifespan": "on",  # the app starts its health checks and closes its pools there
        "access_log": False,  # the app logs one JSON line per inference request itself
        "proxy_headers": False,  # the access log's "remote" is the peer, as before
        "server_header": False,
        "timeout_keep_alive": 75,
        "timeout_graceful_shutdown": 10,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # UvicornWorker copies gunicorn's handlers onto uvicorn's loggers and stops their
        # propagation; ours is the JSON handler on the root logger (onnxfleet.logs).
        error = logging.getLogger("uvicorn.error")
        error.handlers = []
        error.propagate = True
        error.setLevel(logging.NOTSET)
        error.addFilter(_drop_color_message)
        access = logging.getLogger("uvicorn.access")
        access.handlers = []
        access.propagate = False

    def init_signals(self) -> None:
        super().init_signals()
        # UvicornWorker resets every gunicorn signal to SIG_DFL, which for SIGHUP means
        # death. The arbiter forwards its SIGHUP here (cli._forward_hup): ignore it until
        # the app installs its reload handler on the loop at lifespan start-up.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _drop_color_message(record: logging.LogRecord) -> bool:
    """uvicorn adds an ANSI-coloured copy of some messages; the JSON lines don't need it."""
    record.__dict__.pop("color_message", None)
    return True
