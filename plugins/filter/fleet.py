# Copyright: onnxfleet contributors
# Apache-2.0
"""Filters that turn the fleet contract (inventory groups, ``fleet_*`` host variables)
into the structures the roles write: the orchestrator's routing table, and the order in
which nodes are changed one at a time."""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean

# The per-node shape: a host variable of a worker node wins over the fleet-wide value.
_SHAPE = (
    ("fleet_worker_containers", "containers"),
    ("fleet_worker_base_port", "base_port"),
    ("fleet_worker_max_concurrency", "max_concurrency"),
)


def natural_key(name):
    """worker-2 before worker-10: digit runs compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", str(name))]


def natural_sort(names):
    """The names in natural order (worker-2 before worker-10)."""
    return sorted(names, key=natural_key)


def _positive_int(host, name, value):
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if isinstance(value, bool) or number < 1:
        raise AnsibleFilterError(
            "routing_table: %s: %s must be an integer >= 1, not %r" % (host, name, value)
        )
    return number


def _required(host, variables, name):
    value = variables.get(name) if name in variables else None
    if value in (None, ""):
        raise AnsibleFilterError(
            "routing_table: %s has no %s (the inventory contract gives every node fleet_node "
            "and fleet_private_address)" % (host, name)
        )
    return str(value)


def _batching(batching, card):
    """The table's ``model`` (the card's signature) and ``batching`` objects."""
    missing = [key for key in ("name", "inputs", "outputs") if key not in (card or {})]
    if missing:
        raise AnsibleFilterError(
            "routing_table: batching needs the model card's name, inputs and outputs; the card "
            "has no %s (give them, or set fleet_batching.enabled: false)" % ", ".join(missing)
        )
    model = {key: card[key] for key in ("name", "inputs", "outputs")}
    model["batch"] = card.get("batch", False) is True
    return model, {key: batching[key] for key in ("max_batch_size", "max_delay_ms") if key in batching}


def routing_table(
    hosts, hostvars, *, containers, base_port, max_concurrency, queue, health=None, batching=None, card=None
):
    """The orchestrator's routing table (docs/design.md) for the worker nodes ``hosts``.

    Every node gives ``<containers>`` containers on consecutive ports from ``<base_port>``
    at its ``fleet_private_address``, named ``<fleet_node>/<index>``; a node's own
    ``fleet_worker_containers``, ``fleet_worker_base_port`` and
    ``fleet_worker_max_concurrency`` host variables win over the fleet-wide values given.
    With ``batching`` enabled (``fleet_batching``), the table also has the model card's
    signature and the batching settings.
    """
    fleet_wide = {"containers": containers, "base_port": base_port, "max_concurrency": max_concurrency}
    nodes = []
    for host in hosts:
        variables = hostvars[host]
        shape = {
            key: _positive_int(host, var, variables[var] if var in variables else fleet_wide[key])
            for var, key in _SHAPE
        }
        node = _required(host, variables, "fleet_node")
        nodes.append((node, _required(host, variables, "fleet_private_address"), shape))
    entries = [
        {
            "name": "%s/%d" % (node, index),
            "url": "http://%s:%d" % (address, shape["base_port"] + index),
            "node": node,
            "max_concurrency": shape["max_concurrency"],
        }
        for node, address, shape in sorted(nodes, key=lambda found: natural_key(found[0]))
        for index in range(shape["containers"])
    ]
    table = {"containers": entries, "queue": dict(queue)}
    if health:
        table["health"] = dict(health)
    if batching and boolean(batching.get("enabled", False)):
        table["model"], table["batching"] = _batching(batching, card)
    return table


class FilterModule:
    def filters(self):
        return {"routing_table": routing_table, "natural_sort": natural_sort}
