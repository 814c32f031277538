"""`python -m tests.simbackend`: fake model containers with a fixed service time.

A test double for the tests and the benchmarks (bench/ imports tests/): it ships in
neither the package nor the image.

One lean asyncio process (raw protocols, httptools' request parser, keep-alive) serves
several ports; each port behaves like one model container: ``POST /run_model`` and
``POST /v2/models/{name}/infer`` (and the ``GET /v2...`` metadata routes) answer after
``--service-ms`` with what they received, ``GET /readyz`` answers at
once. Tests and benchmarks read what each port saw (``GET /stats``: requests served, the
highest concurrency observed, the arrival order of ``X-Request-Id``) and switch ports into
failure modes (``POST /admin/mode``): ``ok``, ``fail`` (500), ``refuse`` (listener closed,
connections reset), ``drop`` (connection closed on each inference request, no answer),
``drop_once`` (the same for the next inference request only, then ``ok``), ``hang``
(never answers), ``vanish`` (neither inference nor ``/readyz`` answers: a stopped host,
which sends no reset), ``unready`` (``/readyz`` 503). ``service_ms`` in the same body
makes a port slow. A ``--control`` port (not a container) reaches every port by number.

``--echo-model``: the ports serve a model named ``echo`` as the worker serves one (the same
codec, answers and errors): input ``x`` (FP32, shape [-1, -1]) comes back as output ``y``,
``n`` (INT64, [-1]) is each row's width; its first dimension is a batch. For batching
tests: ``max_rows`` in the mode body refuses (422) calls with more rows, as a model with a
smaller batch limit would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections import deque
from typing import Any

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

MODES = ("ok", "fail", "refuse", "drop", "drop_once", "hang", "vanish", "unready")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        type=_address,
        action="append",
        required=True,
        metavar="HOST:PORT",
        help="one fake container per address (repeat)",
    )
    parser.add_argument(
        "--control", type=_address, metavar="HOST:PORT", help="control port for all containers"
    )
    parser.add_argument("--service-ms", type=float, default=5.0, help="service time (default: %(default)s)")
    parser.add_argument("--model-version", default="sim-1", help="X-Model-Version (default: %(default)s)")
    parser.add_argument(
        "--echo-model", action="store_true", help="answer inference as a worker serving the echo model"
    )


ECHO_NAME = "echo"
ECHO_MODEL: dict[str, Any] = {
    "name": ECHO_NAME,
    "batch": True,
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}],
    "outputs": [
        {"name": "y", "datatype": "FP32", "shape": [-1, -1]},
        {"name": "n", "datatype": "INT64", "shape": [-1]},
    ],
}


class EchoModel:
    """The echo model behind the worker's codec: what the worker would answer."""

    def __init__(self) -> None:
        from onnxfleet.oip import Signature, TensorSpec

        def specs(key: str) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in ECHO_MODEL[key])

        self.signature = Signature(specs("inputs"), specs("outputs"), batch=True)

    def answer(self, port: Port, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes, bytes]:
        """(status, body, extra head lines) for an inference request."""
        import numpy as np

        from onnxfleet import oip

        identity = (ECHO_NAME, port.version)
        try:
            if path == "/run_model":
                mimetype = headers.get("content-type", "").split(";")[0].strip().lower()
                if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
                    raise oip.UnsupportedMediaType("the body must be JSON (Content-Type: application/json)")
                feeds = oip.run_model.parse_request(body, self.signature)
                request = None
            else:
                if path.split("/")[3] != ECHO_NAME:
                    return (
                        404,
                        b'{"error":"no such model","code":"not_found"}',
                        b"Content-Type: application/json\r\n",
                    )
                request = oip.parse_request(
                    body, headers.get("inference-header-content-length"), self.signature
                )
                self.signature.check_outputs(request.output_names(self.signature))
                feeds = request.inputs
            x = feeds["x"]
            if port.max_rows is not None and x.shape[0] > port.max_rows:
                raise oip.InvalidInput(f"at most {port.max_rows} rows in one call")
        except oip.CodecError as exc:
            return exc.status, oip.jsonio.dumps(exc.body()), b"Content-Type: application/json\r\n"
        outputs = {"y": x, "n": np.full(x.shape[0], x.shape[1], dtype=np.int64)}
        if request is None:
            return (
                200,
                oip.run_model.encode_response(outputs, *identity, port.name),
                b"Content-Type: application/json\r\n",
            )
        wanted = {name: outputs[name] for name in request.output_names(self.signature)}
        data, content = oip.encode_response(request, wanted, *identity, {"container": port.name})
        return 200, data, b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in content.items())


def _response(status: int, payload: Any, extra: bytes = b"") -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
        % (status, _REASONS.get(status, "").encode(), len(body), extra)
    ) + body


class Port:
    """One fake container."""

    def __init__(
        self, host: str, port: int, service_ms: float, version: str, echo: EchoModel | None = None
    ) -> None:
        self.host, self.port = host, port
        self.echo = echo
        self.max_rows: int | None = None
        self.name = f"sim-{port}"
        self.service_ms = service_ms
        self.version = version
        self.mode = "ok"
        self.server: asyncio.Server | None = None
        self.connections: set[_Conn] = set()
        self.inflight = 0
        self.reset()
        self.headers = b"X-Model-Version: %s\r\nX-Container: %s\r\n" % (version.encode(), self.name.encode())

    def reset(self) -> None:
        """Fresh counters; ``in_flight`` is live (computations still running keep counting)."""
        self.received = 0
        self.served = 0
        self.max_inflight = self.inflight
        self.order: list[str] = []

    def stats(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "mode": self.mode,
            "service_ms": self.service_ms,
            "max_rows": self.max_rows,
            "received": self.received,
            "served": self.served,
            "in_flight": self.inflight,
            "max_in_flight": self.max_inflight,
            "order": self.order,
        }

    async def open(self) -> None:
        if self.server is None:
            loop = asyncio.get_running_loop()
            self.server = await loop.create_server(
                lambda: _Conn(self, ports=None), self.host, self.port, reuse_address=True
            )

    def shut(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for conn in list(self.connections):
            conn.abort()

    async def set_mode(self, mode: str, service_ms: float | None, max_rows: int | None = None) -> None:
        if service_ms is not None:
            self.service_ms = service_ms
        self.max_rows = max_rows
        self.mode = mode
        if mode == "refuse":
            self.shut()
        else:
            await self.open()


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection: requests (parsed by httptools) are answered in order, one at a time."""

    def __init__(self, port: Port | None, ports: dict[int, Port] | None) -> None:
        self.port = port
        self.ports = ports  # set on the control port
        self.parser = HttpRequestParser(self)
        self.requests: deque[tuple[str, str, dict[str, str], bytes]] = deque()
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.busy = False
        self.hanging = False  # holds a request that is never answered (hang, vanish)
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        if self.port is not None:
            self.port.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.port is not None:
            self.port.connections.discard(self)
            if self.hanging:  # nothing is computed for a request that never ends
                self.port.inflight -= 1
                self.hanging = False
        self.transport = None

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade):
            self._send(_response(400, {"error": "malformed request", "code": "bad_request"}))
            if self.transport is not None:
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", {}, []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("ascii")
        path = self.url.decode("latin-1").split("?", 1)[0]
        self.requests.append((method, path, self.headers, b"".join(self.body)))
        self._next()

    def _next(self) -> None:
        while not self.busy and self.requests and self.transport is not None:
            self._handle(*self.requests.popleft())

    def _send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        port = self.port
        if self.ports is not None:  # control port
            self._control(method, path, body)
            return
        assert port is not None
        infer = path == "/run_model" or (path.startswith("/v2/models/") and path.endswith("/infer"))
        metadata = path == "/v2" or path.startswith("/v2/models/")
        if (method == "POST" and infer) or (method == "GET" and metadata):
            self._infer(port, method, path, headers, body)
        elif path in ("/readyz", "/healthz"):
            if port.mode == "vanish":
                self.busy = True  # never answers, nothing computed
                return
            ready = port.mode != "unready" or path == "/healthz"
            self._send(_response(200 if ready else 503, {"status": "ready" if ready else "unready"}))
        elif path in ("/stats", "/admin/mode", "/admin/reset"):
            self._admin(method, path, body, [port])
        else:
            self._send(_response(404, {"error": f"no route {path}", "code": "not_found"}))

    def _infer(self, port: Port, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        port.received += 1
        request_id = headers.get("x-request-id", "")
        port.order.extend(request_id.split(","))  # a merged call lists its requests' ids
        if port.mode in ("drop", "drop_once"):
            if port.mode == "drop_once":  # the next one is answered
                port.mode = "ok"
            self.abort()
            return
        self.busy = True
        port.inflight += 1
        port.max_inflight = max(port.max_inflight, port.inflight)
        if port.mode in ("hang", "vanish"):
            self.hanging = True
            return
        if port.echo is not None and port.mode != "fail" and method == "POST":
            status, answer, content = port.echo.answer(port, path, headers, body)
            extra = port.headers + content
            if request_id:
                extra += b"X-Request-Id: %s\r\n" % request_id.encode("latin-1")
            head = b"HTTP/1.1 %d %s\r\n%sContent-Length: %d\r\n\r\n" % (
                status,
                _REASONS.get(status, "").encode(),
                extra,
                len(answer),
            )
            self.loop.call_later(port.service_ms / 1000.0, self._finish, port, head + answer)
            return
        status = 500 if port.mode == "fail" else 200
        payload = {
            "container": port.name,
            "version": port.version,
            "id": request_id,
            "method": method,
            "path": path,
            "authorization": "authorization" in headers,
            "content_type": headers.get("content-type"),
            "bytes": len(body),
        }
        data = _response(status, payload, port.headers)
        self.loop.call_later(port.service_ms / 1000.0, self._finish, port, data)

    def _finish(self, port: Port, data: bytes) -> None:
        # like a gunicorn thread running onnxruntime: the computation ends, and counts as
        # in flight until then, whether or not its client is still there
        port.inflight -= 1
        port.served += 1
        self.busy = False
        self._send(data)
        self._next()

    def _control(self, method: str, path: str, body: bytes) -> None:
        assert self.ports is not None
        try:
            target = json.loads(body).get("port") if body else None
        except (ValueError, AttributeError):
            target = None
        ports = (
            list(self.ports.values())
            if target is None
            else [self.ports[target]]
            if target in self.ports
            else []
        )
        if not ports:
            self._send(_response(404, {"error": f"unknown port {target}", "code": "not_found"}))
            return
        self._admin(method, path, body, ports)

    def _admin(self, method: str, path: str, body: bytes, ports: list[Port]) -> None:
        if path == "/stats":
            result: Any = (
                {str(p.port): p.stats() for p in ports} if self.ports is not None else ports[0].stats()
            )
            self._send(_response(200, result))
        elif method == "POST" and path == "/admin/reset":
            for p in ports:
                p.reset()
            self._send(_response(200, {"reset": [p.port for p in ports]}))
        elif method == "POST" and path == "/admin/mode":
            try:
                request = json.loads(body)
                mode = request.get("mode", "ok")
                service_ms = request.get("service_ms")
                max_rows = request.get("max_rows")
                whole = isinstance(max_rows, int) and not isinstance(max_rows, bool)
                if mode not in MODES or not (max_rows is None or whole):
                    raise ValueError(mode)
            except (ValueError, AttributeError):
                self._send(
                    _response(400, {"error": f"expected {{'mode': one of {MODES}}}", "code": "bad_request"})
                )
                return
            self.busy = True  # answer only once the listener state has changed
            self.loop.create_task(self._set_modes(ports, mode, service_ms, max_rows))
        else:
            self._send(_response(404, {"error": f"no route {path}", "code": "not_found"}))

    async def _set_modes(
        self, ports: list[Port], mode: str, service_ms: float | None, max_rows: int | None
    ) -> None:
        for p in ports:
            await p.set_mode(mode, service_ms, max_rows)
        self.busy = False
        self._send(_response(200, {"mode": mode, "ports": [p.port for p in ports]}))
        self._next()


async def _main(args: argparse.Namespace) -> None:
    echo = EchoModel() if args.echo_model else None
    ports = {port: Port(host, port, args.service_ms, args.model_version, echo) for host, port in args.listen}
    for p in ports.values():
        await p.open()
    if args.control is not None:
        host, port = args.control
        await asyncio.get_running_loop().create_server(
            lambda: _Conn(None, ports), host, port, reuse_address=True
        )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()


def run(args: argparse.Namespace) -> int:
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main(args))
    else:
        uvloop.run(_main(args))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.simbackend", description=__doc__.splitlines()[0])
    configure(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
