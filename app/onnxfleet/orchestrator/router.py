"""Routing: exact paths, plus paths with one ``{param}`` segment (``/jobs/{id}``)."""

from __future__ import annotations

from onnxfleet.orchestrator.errors import MethodNotAllowed, NotFound
from onnxfleet.orchestrator.server import Guard, Handler, Request, Route


class Router:
    def __init__(self) -> None:
        self.exact: dict[str, dict[str, Route]] = {}
        self.patterns: list[tuple[str, str, str, dict[str, Route]]] = []

    def add(self, method: str, path: str, handler: Handler, guard: Guard | None = None) -> None:
        """``GET`` routes also answer ``HEAD``."""
        route = Route(handler, guard)
        methods = (method, "HEAD") if method == "GET" else (method,)
        if "{" in path:
            prefix, rest = path.split("{", 1)
            param, suffix = rest.split("}", 1)
            table = next((t for p, n, s, t in self.patterns if (p, n, s) == (prefix, param, suffix)), None)
            if table is None:
                table = {}
                self.patterns.append((prefix, param, suffix, table))
        else:
            table = self.exact.setdefault(path, {})
        for m in methods:
            table[m] = route

    def route(self, request: Request) -> Route:
        """The route for ``request`` (its ``params`` filled in); NotFound or MethodNotAllowed."""
        path = request.path
        table = self.exact.get(path)
        if table is None:
            for prefix, param, suffix, candidate in self.patterns:
                if path.startswith(prefix) and path.endswith(suffix):
                    value = path[len(prefix) : len(path) - len(suffix)]
                    if value and "/" not in value and "{" not in value and "}" not in value:
                        request.params[param] = value
                        table = candidate
                        break
            else:
                raise NotFound(f"no route {path}: see docs/orchestrator.md for the API")
        route = table.get(request.method)
        if route is None:
            allowed = ", ".join(sorted(table))
            raise MethodNotAllowed(
                f"{request.method} is not allowed on {path}: expected {allowed}",
                headers=[(b"Allow", allowed.encode())],
            )
        return route
