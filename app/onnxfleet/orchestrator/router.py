"""Routing: exact paths first, then patterns whose ``{param}`` segments match one segment."""

from __future__ import annotations

from onnxfleet.orchestrator.errors import MethodNotAllowed, NotFound
from onnxfleet.orchestrator.messages import Guard, Handler, Request, Route


class Router:
    def __init__(self) -> None:
        self.exact: dict[str, dict[str, Route]] = {}
        self.patterns: list[tuple[list[str], dict[str, Route]]] = []

    def add(self, method: str, path: str, handler: Handler, guard: Guard | None = None) -> None:
        """``GET`` routes also answer ``HEAD``."""
        route = Route(handler, guard)
        methods = (method, "HEAD") if method == "GET" else (method,)
        if "{" in path:
            segments = path.split("/")
            table = next((t for s, t in self.patterns if s == segments), None)
            if table is None:
                table = {}
                self.patterns.append((segments, table))
        else:
            table = self.exact.setdefault(path, {})
        for m in methods:
            table[m] = route

    def route(self, request: Request) -> Route:
        """The route for ``request`` (its ``params`` filled in); NotFound or MethodNotAllowed."""
        path = request.path
        table = self.exact.get(path)
        if table is None:
            table = self._match(request)
        route = table.get(request.method)
        if route is None:
            allowed = ", ".join(sorted(table))
            raise MethodNotAllowed(
                f"{request.method} is not allowed on {path}: expected {allowed}",
                headers=[(b"Allow", allowed.encode())],
            )
        return route

    def _match(self, request: Request) -> dict[str, Route]:
        segments = request.path.split("/")
        for pattern, table in self.patterns:
            if len(pattern) != len(segments):
                continue
            params = {}
            for want, got in zip(pattern, segments, strict=True):
                if want.startswith("{"):
                    if not got or "{" in got or "}" in got:
                        break
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                request.params = params
                return table
        raise NotFound(f"no route {request.path}: see docs/orchestrator.md for the API")
