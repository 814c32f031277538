"""What a client can make the orchestrator hold: the server's limits, and the request body
bytes all connections hold together (``BodyBudget``, drawn on by each connection's
``BodyLedger``); docs/orchestrator.md gives the figures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from onnxfleet.orchestrator.messages import Request

# request body bytes each connection holds without drawing on the shared budget: a small
# request always fits, however much of the budget others hold (docs/orchestrator.md)
CONNECTION_ALLOWANCE = 64 * 1024


class BodyBudget:
    """The request body bytes all connections hold at once, beyond their allowances."""

    def __init__(self, capacity: int, allowance: int = CONNECTION_ALLOWANCE) -> None:
        self.capacity = capacity
        self.allowance = allowance
        self.used = 0  # drawn beyond the allowances: at most capacity
        self.held = 0  # all request body bytes the connections hold

    def ledger(self) -> BodyLedger:
        return BodyLedger(self)


class BodyLedger:
    """What one connection holds of request bodies (being read, read ahead, or waiting for
    their answer); the only place the shared budget is drawn on and given back. Each request
    notes what it holds (``Request.held``).

    A request's bytes are given back once: when it is answered (``release``), else when the
    connection ends (``close``, which gives back all and takes nothing after).
    """

    __slots__ = ("budget", "closed", "drawn", "held")

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.held = 0  # bytes this connection holds
        self.drawn = 0  # of them, beyond its allowance: from the shared budget
        self.closed = False

    def _set(self, held: int) -> bool:
        budget = self.budget
        drawn = held - budget.allowance if held > budget.allowance else 0
        if drawn > self.drawn and budget.used + drawn - self.drawn > budget.capacity:
            return False
        budget.used += drawn - self.drawn
        budget.held += held - self.held
        self.drawn = drawn
        self.held = held
        return True

    def hold(self, msg: Request, size: int) -> bool:
        """Hold ``size`` bytes in all for ``msg`` (no more than it holds: nothing); False: no room."""
        more = size - msg.held
        if more <= 0:
            return True
        if self.closed or not self._set(self.held + more):
            return False
        msg.held = size
        return True

    def release(self, msg: Request) -> None:
        held, msg.held = msg.held, 0
        if held and not self.closed:
            self._set(self.held - held)

    def close(self) -> None:
        self.closed = True
        self._set(0)


@dataclass(frozen=True)
class Limits:
    max_head_bytes: int = 64 * 1024  # request line + headers
    max_headers: int = 100
    max_body_bytes: int = 8 * 1024 * 1024
    head_timeout_s: float = 10.0  # from a request's first byte to the end of its head
    body_timeout_s: float = 60.0  # from the end of the head to the end of the body (whole body)
    keep_alive_s: float = 75.0  # idle time between requests
    linger_s: float = 10.0  # reading and dropping the rest of a refused body
    send_timeout_s: float = 30.0  # unsent answers above the high-water mark, or after a close
    max_connections: int = 1000
    max_connection_bytes: int = 256 * 1024 * 1024  # request bodies held, all connections (BodyBudget)
