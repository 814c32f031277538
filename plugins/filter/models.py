# Copyright: onnxfleet contributors
# Apache-2.0
"""Filters for the fleet's models (``fleet_models``, docs/models.md): the list normalized
and validated, the placement of their containers on the worker nodes, and the
orchestrator's routing table of several models (version 2, docs/models.md)."""

from __future__ import annotations

import hashlib
import json
import os
import re

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean
from ansible_collections.onnxfleet.serving.plugins.filter.fleet import natural_key

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
KEYS = (
    "name",
    "path",
    "card",
    "version",
    "sha256",
    "containers",
    "nodes",
    "max_concurrency",
    "batching",
    "default",
)
BATCHING_KEYS = ("enabled", "max_batch_size", "max_delay_ms")
# A node runs at most this many containers per CPU (all models together): onnxruntime is
# CPU-bound, and more than two containers per CPU only queue on the CPU (docs/models.md).
CONTAINERS_PER_CPU = 2
# The demo model of this checkout (an empty path, as an empty fleet_model_file): this file
# is plugins/filter/ of the checkout, as a role's path is roles/<role>/.
DEMO_MODEL = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "app", "models", "digits.onnx"
)
# Node shape: a worker node's own host variable wins over the fleet-wide value.
_SHAPE = (
    ("fleet_worker_containers", "containers"),
    ("fleet_worker_base_port", "base_port"),
    ("fleet_worker_max_concurrency", "max_concurrency"),
)


def _fail(where, field, expected, value):
    raise AnsibleFilterError("fleet_models: %s: %s: expected %s, got %r" % (where, field, expected, value))


def _int(where, field, value, low=1, high=None):
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if (
        isinstance(value, bool)
        or number is None
        or (isinstance(value, float) and value != number)
        or number < low
        or (high is not None and number > high)
    ):
        limits = "an integer >= %d" % low if high is None else "an integer from %d to %d" % (low, high)
        _fail(where, field, limits, value)
    return number


def _source(where, path):
    """(scheme, path): local (an absolute path on the controller), s3 or https."""
    text = str(path)
    if text.startswith("s3://"):
        rest = text[len("s3://") :]
        bucket, key = rest.split("/", 1) if "/" in rest else (rest, "")
        if not bucket or not key:
            _fail(where, "path", "s3://bucket/key (a bucket and a key)", path)
        return "s3"
    if text.startswith("https://"):
        if len(text) == len("https://"):
            _fail(where, "path", "https://host/file.onnx", path)
        return "https"
    if "://" in text:
        _fail(where, "path", "an absolute local path, s3://bucket/key or https://... (with sha256)", path)
    if not os.path.isabs(text):
        _fail(
            where, "path", "an absolute path on the controller (e.g. {{ playbook_dir }}/models/x.onnx)", path
        )
    if not os.path.isfile(text):
        _fail(where, "path", "an existing file on the controller", path)
    return "local"


def _card(where, entry, scheme, path):
    """The model card (a dict, {} for none) and its path ('' for none)."""
    given = entry.get("card")
    if given in (None, ""):
        if scheme != "local":
            return {}, ""
        card = re.sub(r"[.]onnx$", "", path) + ".json"
        if not os.path.isfile(card):
            return {}, ""
    else:
        card = str(given)
        if not os.path.isabs(card) or not os.path.isfile(card):
            _fail(where, "card", "an existing JSON file on the controller (absolute path)", given)
    try:
        with open(card, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as err:
        raise AnsibleFilterError(
            "fleet_models: %s: card: %s is not readable JSON (%s)" % (where, card, err)
        ) from err
    if not isinstance(data, dict):
        _fail(where, "card", "a JSON object", card)
    return data, card


def _file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _batching(where, entry, fleet_batching, signature):
    given = entry.get("batching")
    if given is None:
        settings = dict(fleet_batching or {"enabled": False})
        if signature is None:
            # A model without a card signature cannot batch; only an explicit request fails.
            settings["enabled"] = False
    elif not isinstance(given, dict):
        _fail(where, "batching", "a mapping {enabled, max_batch_size, max_delay_ms}", given)
    else:
        unknown = sorted(set(given) - set(BATCHING_KEYS))
        if unknown:
            _fail(where, "batching", "only the keys %s" % ", ".join(BATCHING_KEYS), unknown)
        settings = {"enabled": True, **given}
    try:
        enabled = boolean(settings.get("enabled", False), strict=True)
    except TypeError:
        _fail(where, "batching.enabled", "true or false", settings.get("enabled"))
    result = {
        "enabled": enabled,
        "max_batch_size": _int(where, "batching.max_batch_size", settings.get("max_batch_size", 32)),
        "max_delay_ms": settings.get("max_delay_ms", 0),
    }
    delay = result["max_delay_ms"]
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= 1000:
        _fail(where, "batching.max_delay_ms", "a number from 0 to 1000", delay)
    if enabled and signature is None:
        raise AnsibleFilterError(
            "fleet_models: %s: batching: enabled needs the model card's name, inputs and outputs "
            "(give a card, or set batching.enabled: false)" % where
        )
    return result


def _where(index, entry):
    """How an error names the entry: its index, and its name when it has one."""
    if not isinstance(entry, dict):
        _fail("entry %d" % index, "the entry", "a mapping with at least name and path", entry)
    name = entry.get("name")
    where = "entry %d" % index if name in (None, "") else "entry %d (%s)" % (index, name)
    unknown = sorted(set(entry) - set(KEYS))
    if unknown:
        _fail(where, "keys", "only %s" % ", ".join(KEYS), unknown)
    if name in (None, ""):
        _fail(where, "name", "a model name (required)", name)
    if not isinstance(name, str) or not NAME.match(name):
        _fail(where, "name", "a name matching %s" % NAME.pattern, name)
    if "path" not in entry or entry["path"] is None:
        _fail(
            where,
            "path",
            "the model's file: an absolute local path, s3://bucket/key or https://... (required)",
            None,
        )
    return where


def _version(where, entry, card, *, scheme, path, sha256):
    version = entry.get("version")
    if version in (None, ""):
        version = card.get("version")
    if version in (None, "") and scheme == "local":
        # As the model_worker role does: no version anywhere, the file's sha256 prefix.
        version = (sha256 or _file_sha256(path))[:12]
    if version in (None, ""):
        _fail(where, "version", "a version (an s3 or https model without a card needs one)", None)
    return str(version)


def _nodes(where, nodes):
    if nodes in (None, ""):
        return "all"
    if isinstance(nodes, bool) or not isinstance(nodes, (int, float, str)):
        _fail(where, "nodes", '"all", a count of worker nodes or an inventory group name', nodes)
    if isinstance(nodes, (int, float)) or nodes.isdigit():
        return _int(where, "nodes", nodes)
    return nodes


def _optional_int(where, entry, field):
    return None if entry.get(field) is None else _int(where, field, entry[field])


def _one(index, entry, fleet_batching, demo_model):
    where = _where(index, entry)
    # An empty path is the demo model, as an empty fleet_model_file is.
    path = str(entry["path"]) or demo_model or DEMO_MODEL
    scheme = _source(where, path)
    sha256 = entry.get("sha256") or ""
    if sha256 and not SHA256.match(str(sha256)):
        _fail(where, "sha256", "64 lowercase hex digits", sha256)
    if scheme == "https" and not sha256:
        _fail(where, "sha256", "the file's sha256 (required with an https path)", None)
    card, card_path = _card(where, entry, scheme, path)
    sha256 = str(sha256 or card.get("sha256") or "")
    signature = None
    if all(key in card for key in ("name", "inputs", "outputs")):
        signature = {
            "batch": card.get("batch", False) is True,
            "inputs": card["inputs"],
            "outputs": card["outputs"],
        }
    try:
        default = boolean(entry.get("default", False), strict=True)
    except TypeError:
        _fail(where, "default", "true or false", entry.get("default"))
    return {
        "name": entry["name"],
        "path": path,
        "source": scheme,
        "card": card_path,
        "version": _version(where, entry, card, scheme=scheme, path=path, sha256=sha256),
        "sha256": sha256,
        "containers": _optional_int(where, entry, "containers"),
        "nodes": _nodes(where, entry.get("nodes", "all")),
        "max_concurrency": _optional_int(where, entry, "max_concurrency"),
        "batching": _batching(where, entry, fleet_batching, signature),
        "default": default,
        "signature": signature,
    }


def fleet_models(models, batching=None, demo_model="", model_file=""):
    """``fleet_models`` normalized: every field filled (card beside a local path, the
    card's version, nodes ``all``, batching from ``fleet_batching``), exactly one model
    ``default``; an entry outside the contract fails, naming its index, name and field."""
    if not isinstance(models, list) or not models:
        _fail("the list", "fleet_models", "a non-empty list of models", models)
    found = [_one(index, entry, batching, demo_model) for index, entry in enumerate(models)]
    seen = {}
    for index, model in enumerate(found):
        if model["name"] in seen:
            _fail(
                "entry %d (%s)" % (index, model["name"]),
                "name",
                "a name no other model has (entry %d has it too)" % seen[model["name"]],
                model["name"],
            )
        seen[model["name"]] = index
    defaults = [index for index, model in enumerate(found) if model["default"]]
    if len(defaults) > 1:
        _fail(
            "entry %d (%s)" % (defaults[1], found[defaults[1]]["name"]),
            "default",
            "at most one default model (entry %d is default too)" % defaults[0],
            True,
        )
    found[defaults[0] if defaults else 0]["default"] = True
    if model_file and str(model_file) not in {model["path"] for model in found}:
        raise AnsibleFilterError(
            "fleet_models: fleet_model_file (%s) is the path of no model of fleet_models; with "
            "fleet_models, give each model's file as its path and leave fleet_model_file empty" % model_file
        )
    return found


def _cpus(variables, fleet_cpus, controller_cpus):
    """A node's CPUs: fleet_node_cpus (its own or the fleet's), else its gathered facts,
    else (local nodes share the controller's CPUs) the controller's; None: unknown."""
    own = variables.get("fleet_node_cpus", fleet_cpus) if variables else fleet_cpus
    if own not in (None, ""):
        return _int("fleet_node_cpus", "fleet_node_cpus", own)
    facts = (variables or {}).get("ansible_facts") or {}
    nproc = (variables or {}).get("ansible_processor_nproc") or facts.get("processor_nproc")
    if nproc:
        return int(nproc)
    return controller_cpus


def _single_model(entry, model, deployed):
    """One model: the workers are still deployed from the single-model variables (the
    model_worker role), so an entry may not ask for anything else."""
    where = "entry 0 (%s)" % model["name"]
    if deployed and model["path"] != str(deployed):
        raise AnsibleFilterError(
            "fleet_models: %s: path: with one model, the workers serve fleet_model_file (%s); set "
            "fleet_model_file: %s instead (the default fleet_models follows it)"
            % (where, deployed, model["path"])
        )
    moved = {
        "containers": "fleet_worker_containers",
        "max_concurrency": "fleet_worker_max_concurrency",
        "batching": "fleet_batching",
    }
    for key, variable in moved.items():
        if entry.get(key) is not None:
            raise AnsibleFilterError(
                "fleet_models: %s: %s: with one model, set %s instead (per-model settings need two "
                "models or more)" % (where, key, variable)
            )
    if model["nodes"] != "all":
        _fail(where, "nodes", '"all" (one model is served by every worker node)', model["nodes"])


def _worker_nodes(hosts, hostvars, worker_count, fleet_wide, cpus):
    """The worker nodes in natural order: {node, host, address, cpus, shape, models}."""
    by_node = {}
    for host in hosts or []:
        variables = hostvars[host]
        node = variables.get("fleet_node") if "fleet_node" in variables else None
        if node in (None, ""):
            raise AnsibleFilterError("fleet_models: worker host %s has no fleet_node" % host)
        by_node[str(node)] = host
    if worker_count is not None:
        count = _int("fleet_worker_count", "fleet_worker_count", worker_count, low=0)
        planned = ["worker-%d" % number for number in range(1, count + 1)]
    else:
        planned = sorted(by_node, key=natural_key)
    nodes = []
    for node in planned:
        host = by_node.get(node)
        variables = hostvars[host] if host is not None else {}
        shape = {
            key: _int(node, var, variables[var] if var in variables else fleet_wide[key])
            for var, key in _SHAPE
        }
        address = variables.get("fleet_private_address") if "fleet_private_address" in variables else None
        if host is not None and worker_count is None and address in (None, ""):
            raise AnsibleFilterError("fleet_models: worker host %s has no fleet_private_address" % host)
        nodes.append(
            {
                "node": node,
                "host": host,
                "address": address,
                "cpus": _cpus(variables if host is not None else None, *cpus),
                "shape": shape,
                "models": [],
            }
        )
    return nodes


def _serving(where, chosen, nodes, groups):
    """The nodes a model's ``nodes`` names."""
    if chosen == "all":
        serving = nodes
    elif isinstance(chosen, int):
        if chosen > len(nodes):
            _fail(where, "nodes", "a count of at most %d (the worker nodes)" % len(nodes), chosen)
        serving = nodes[:chosen]
    else:
        if chosen not in groups:
            _fail(
                where,
                "nodes",
                '"all", a count or an inventory group (groups: %s; a group of nodes that do not '
                "exist yet is unknown: provision first with playbooks/provision.yml)"
                % ", ".join(sorted(name for name in groups if name not in ("all", "ungrouped"))),
                chosen,
            )
        members = set(groups[chosen])
        serving = [found for found in nodes if found["host"] in members]
    if not serving:
        _fail(where, "nodes", "at least one worker node to serve it", chosen)
    return serving


def _place(found, normalized):
    """One node's containers: each model placed on it takes the next ports, in list order."""
    port = found["shape"]["base_port"]
    served = []
    for index in found["models"]:
        model = normalized[index]
        count = model["containers"] or found["shape"]["containers"]
        prefix = found["node"] if index == 0 else "%s/%s" % (found["node"], model["name"])
        served.append(
            {
                "name": model["name"],
                "containers": count,
                "ports": list(range(port, port + count)),
                "container_names": ["%s/%d" % (prefix, i) for i in range(count)],
                "max_concurrency": model["max_concurrency"] or found["shape"]["max_concurrency"],
            }
        )
        port += count
    total = sum(model["containers"] for model in served)
    cpus = found["cpus"]
    if cpus is not None and total > CONTAINERS_PER_CPU * cpus:
        raise AnsibleFilterError(
            "fleet_models: %s: %d containers (%s) are more than its %d CPUs allow (at most %d per "
            "CPU, %d); give fewer containers, or place models on fewer nodes (nodes:)"
            % (
                found["node"],
                total,
                ", ".join("%s %d" % (model["name"], model["containers"]) for model in served),
                cpus,
                CONTAINERS_PER_CPU,
                CONTAINERS_PER_CPU * cpus,
            )
        )
    ranges = [
        "%s on %s"
        % (m["name"], m["ports"][0] if m["containers"] == 1 else "%d-%d" % (m["ports"][0], m["ports"][-1]))
        for m in served
    ]
    return {
        "node": found["node"],
        "host": found["host"],
        "address": found["address"],
        "cpus": cpus,
        "models": served,
        "summary": "%s: %s" % (found["node"], ", ".join(ranges) or "no model"),
    }


def fleet_model_plan(
    hosts,
    hostvars,
    *,
    models,
    groups=None,
    worker_count=None,
    containers,
    base_port,
    max_concurrency,
    batching=None,
    demo_model="",
    model_file="",
    provider="local",
    node_cpus="",
    controller_cpus=None,
):
    """The models normalized (``fleet_models``) and their placement on the worker nodes.

    The worker nodes are ``hosts`` (inventory names with ``fleet_node`` and
    ``fleet_private_address``) or, with ``worker_count`` (before provisioning),
    ``worker-1`` .. ``worker-<count>``, each with the variables of the inventory host of
    that ``fleet_node`` when there is one. On every node, the models placed on it take
    consecutive port ranges from its base port, in list order; containers are named
    ``<node>/<index>`` for the first model of the list, ``<node>/<model>/<index>`` for
    the others. Returns ``{"models": [...], "default": name, "nodes": [...]}``.
    """
    normalized = fleet_models(models, batching=batching, demo_model=demo_model, model_file=model_file)
    if len(normalized) == 1:
        _single_model(models[0], normalized[0], model_file or demo_model or DEMO_MODEL)
    if controller_cpus is None and provider == "local":
        controller_cpus = os.cpu_count()
    fleet_wide = {"containers": containers, "base_port": base_port, "max_concurrency": max_concurrency}
    nodes = _worker_nodes(hosts, hostvars, worker_count, fleet_wide, (node_cpus, controller_cpus))
    for index, model in enumerate(normalized):
        where = "entry %d (%s)" % (index, model["name"])
        for found in _serving(where, model["nodes"], nodes, groups or {}):
            found["models"].append(index)
    return {
        "models": normalized,
        "default": next(model["name"] for model in normalized if model["default"]),
        "nodes": [_place(found, normalized) for found in nodes],
    }


def routing_table_v2(plan, *, queue, health=None):
    """The orchestrator's routing table of several models (version 2, docs/models.md)
    from a ``fleet_model_plan`` of the serving worker nodes."""
    entries = {model["name"]: [] for model in plan["models"]}
    for node in plan["nodes"]:
        if node["address"] in (None, ""):
            raise AnsibleFilterError(
                "routing_table_v2: %s has no fleet_private_address (plan the serving hosts, not a count)"
                % node["node"]
            )
        for served in node["models"]:
            entries[served["name"]] += [
                {
                    "name": name,
                    "url": "http://%s:%d" % (node["address"], port),
                    "node": node["node"],
                    "max_concurrency": served["max_concurrency"],
                }
                for name, port in zip(served["container_names"], served["ports"], strict=True)
            ]
    table = {"queue": dict(queue)}
    if health:
        table["health"] = dict(health)
    table["models"] = []
    for model in plan["models"]:
        entry = {"name": model["name"]}
        if model["default"]:
            entry["default"] = True
        entry["containers"] = entries[model["name"]]
        if model["signature"] is not None:
            entry["signature"] = model["signature"]
            if model["batching"]["enabled"]:
                entry["batching"] = {
                    "max_batch_size": model["batching"]["max_batch_size"],
                    "max_delay_ms": model["batching"]["max_delay_ms"],
                }
        table["models"].append(entry)
    return table


class FilterModule:
    def filters(self):
        return {
            "model_list": fleet_models,
            "model_placement": fleet_model_plan,
            "routing_table_v2": routing_table_v2,
        }
