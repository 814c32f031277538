"""Checks on a request's head, before its body is read: its token, its model, its deadline."""

from __future__ import annotations

import ipaddress
import time
from urllib.parse import parse_qsl

from onnxfleet.orchestrator import requestid
from onnxfleet.orchestrator.errors import BadRequest, HTTPError, NotFound, Unauthorized
from onnxfleet.orchestrator.jobs import JobStore, Refused
from onnxfleet.orchestrator.messages import Request
from onnxfleet.orchestrator.pool import ModelPool, Models
from onnxfleet.orchestrator.tokens import Tokens

DEADLINE_HEADER = "X-Request-Timeout-Ms"
_DEADLINE = DEADLINE_HEADER.lower().encode()

# What a browser refused the dashboard on the API listener (it sends no Bearer) is told.
DASHBOARD_HINT = (
    "a browser opens the dashboard on the admin listener, e.g. through an SSH tunnel to the "
    'orchestrator node (docs/operations.md, "The dashboard")'
)


def named_by_address(request: Request) -> None:
    """The admin listener's state (dashboard, /status, /metrics) open without a token, but
    only to requests that name the listener by address or as localhost. A browser with an
    SSH tunnel open would otherwise let any web page it shows read them: the page's own
    host name re-resolved to 127.0.0.1 (DNS rebinding) makes the requests same-origin."""
    raw = request.header(b"host")
    if raw is None:
        return  # not from a browser: browsers always send Host
    host = raw.decode("latin-1").strip()
    name = host[1 : host.find("]")] if host.startswith("[") else host.partition(":")[0]
    if name.lower() == "localhost":
        return
    try:
        ipaddress.ip_address(name)
    except ValueError:
        raise HTTPError(
            f"expected a Host that is an IP address or localhost, got {host!r}: the admin "
            "listener does not answer other names (DNS rebinding)",
            status=403,
            code="forbidden_host",
        ) from None


class Caller:
    """What the head of a request said about its caller and its model (set by the guards)."""

    __slots__ = ("deadline", "pool", "request_id", "version", "who")

    def __init__(
        self,
        deadline: float | None,
        who: tuple[str | None, ...],
        request_id: bytes,
        pool: ModelPool,
        version: str | None = None,
    ) -> None:
        self.deadline = deadline
        self.who = who  # (peer address, X-Forwarded-For, token name): for the access log
        self.request_id = request_id  # in the access log, the container's request, the answer
        self.pool = pool  # the model's pool it goes to
        self.version = version  # only to containers serving this version (None: any)


def _query(request: Request) -> dict[str, str]:
    """``model`` and ``version`` from the query string of /run_model and /jobs (400 when
    repeated or empty); other parameters are ignored, as before they were read."""
    query = request.url.partition(b"?")[2]
    found: dict[str, str] = {}
    for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if key not in ("model", "version"):
            continue
        if key in found:
            raise BadRequest(f"?{key}= is given twice: expected it once")
        if not value:
            raise BadRequest(f"?{key}= is empty: expected a model {'name' if key == 'model' else 'version'}")
        found[key] = value
    return found


def _deadline(request: Request) -> float | None:
    """The instant ``X-Request-Timeout-Ms`` sets, or None (400 for anything but 1 … 86400000)."""
    value = request.header(_DEADLINE)
    if value is None:
        return None
    text = value.strip()
    if not (0 < len(text) <= 8 and text.isdigit() and 0 < int(text) <= 86_400_000):
        shown = text[:40].decode("latin-1")
        raise BadRequest(
            f"{DEADLINE_HEADER}: expected a whole number of milliseconds between 1 and 86400000, "
            f"got '{shown}'"
        )
    return time.monotonic() + int(text) / 1000.0


class Guards:
    """The guards the routes name: who may call what (the client and admin tokens, which it
    holds), and for inference, which model's pool a request goes to (``Caller``)."""

    def __init__(self, tokens: Tokens, admin_tokens: Tokens, models: Models, jobs: JobStore) -> None:
        self.tokens = tokens
        self.admin_tokens = admin_tokens
        self.models = models
        self.jobs = jobs

    def use_tokens(self, tokens: Tokens) -> None:
        """The client tokens a reload read."""
        self.tokens = tokens

    def _caller(self, request: Request) -> str | None:
        """The name of the caller's API token (None: the API is open); 401 without a valid one."""
        if self.tokens.open:
            return None
        name = self.tokens.check(request.header(b"authorization"))
        if name is None:
            raise Unauthorized()
        return name

    def api(self, request: Request) -> None:
        self._caller(request)

    def admin(self, request: Request) -> None:
        if not self.admin_tokens.open and self.admin_tokens.check(request.header(b"authorization")) is None:
            raise Unauthorized()

    def view(self, request: Request) -> None:
        """/status, /metrics and the dashboard on the API listener: as open as the API itself
        (with client tokens configured, any valid client or admin token)."""
        if self.tokens.open:
            return
        authorization = request.header(b"authorization")
        if self.tokens.check(authorization) is None and self.admin_tokens.check(authorization) is None:
            raise Unauthorized()

    def dashboard(self, request: Request) -> None:
        """The dashboard on the API listener: as ``view``, and a browser refused is told where to open it."""
        try:
            self.view(request)
        except Unauthorized:
            raise Unauthorized(f"expected Authorization: Bearer <token>; {DASHBOARD_HINT}") from None

    def infer(self, request: Request) -> None:
        name = self._caller(request)
        forwarded = request.header(b"x-forwarded-for")
        who = (request.remote, forwarded.decode("latin-1") if forwarded is not None else None, name)
        request_id, request.headers = requestid.assign(request.headers)
        deadline = _deadline(request)
        pool, version = self._target(request)
        request.state = Caller(deadline, who, request_id, pool, version)

    def _target(self, request: Request) -> tuple[ModelPool, str | None]:
        """The model's pool a request goes to, and the version it is pinned to (or None).

        ``/v2/models/{name}[/versions/{v}]/...`` by its path; ``/run_model`` and ``/jobs``
        the default model, or ``?model=NAME&version=V``. A version-1 table's one model takes
        any name and path version (its containers judge them); ``?version=`` pins there too.
        """
        models = self.models
        default = models.default
        name = request.params.get("name")
        version = request.params.get("version")
        if name is None and request.path != "/v2":
            asked = _query(request)
            name, version = asked.get("model"), asked.get("version")
            if name is not None and not default.by_name and default.name and name != default.name:
                raise self._model_not_found(name)
        elif not default.by_name:
            return default, None
        pool = default if name is None else models.get(name)
        if pool is None:
            raise self._model_not_found(name)
        if version is not None:
            served = pool.versions()
            if version not in served:
                raise NotFound(
                    f"model {pool.name!r} has no container serving version {version!r}: "
                    f"expected one of {list(served)}",
                    code="version_not_found",
                    model=pool.name,
                    versions=list(served),
                )
        return pool, version

    def _model_not_found(self, name: str | None) -> HTTPError:
        served = self.models.served()
        return NotFound(
            f"no model {name!r} is served here: expected one of {[m['name'] for m in served]}",
            code="model_not_found",
            models=served,
        )

    def job(self, request: Request) -> None:
        self.infer(request)
        self.job_room(request, 0)

    def job_room(self, request: Request, size: int) -> None:
        """429 ``too_many_jobs`` unless the store has room for the caller's job."""
        caller: Caller = request.state
        try:
            self.jobs.check(caller.who[2], size)
        except Refused as refused:
            raise HTTPError(
                refused.message, status=429, code="too_many_jobs", retry_after=refused.retry_after
            ) from None
