"""The inference gate's slots go in arrival order (unit level, real threads)."""

from __future__ import annotations

import threading

from onnxfleet.worker.gate import InferenceGate
from tests.support import wait_for


def test_a_freed_slot_goes_to_the_longest_waiting_request() -> None:
    """The request that frees the slot and at once asks again (its connection's next
    request) queues behind those already waiting, in their order."""
    gate = InferenceGate(1, 8)
    order: list[str] = []

    def request(name: str) -> None:
        with gate.slot():
            order.append(name)

    waiting = [threading.Thread(target=request, args=(name,)) for name in ("b", "c", "d")]
    with gate.slot():
        for n, thread in enumerate(waiting, 1):
            thread.start()
            # each one blocked in turn, in this order
            wait_for(lambda n=n: len(gate._waiting) == n, timeout=5, what=f"{thread.name} waiting")
    request("a again")
    for thread in waiting:
        thread.join(5)
    assert order == ["b", "c", "d", "a again"]
    assert gate.running == 0


def test_slots_run_at_once_up_to_their_number() -> None:
    gate = InferenceGate(2, 8)
    inside = threading.Barrier(2, timeout=5)  # both must be inside together

    def request() -> None:
        with gate.slot():
            inside.wait()

    threads = [threading.Thread(target=request) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert not inside.broken
    assert gate.running == 0
