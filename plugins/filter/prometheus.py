# Copyright: onnxfleet contributors
# Apache-2.0
"""The Prometheus server's configuration (roles/prometheus) from the fleet contract: the
edge's exporter, the orchestrator's admin listener and every model container of a
``model_placement`` plan, as the structure ``prometheus.yml`` holds."""

from __future__ import annotations

from urllib.parse import urlsplit

from ansible.errors import AnsibleFilterError

# One job per component: the rules and the dashboard select on these names.
JOBS = ("edge", "orchestrator", "worker")


def _fail(field, expected, value):
    raise AnsibleFilterError("prometheus_config: %s: expected %s, got %r" % (field, expected, value))


def _port(field, value):
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = 0
    if isinstance(value, bool) or not 1 <= port <= 65535:
        _fail(field, "a TCP port from 1 to 65535", value)
    return port


def _duration(field, value):
    text = str(value)
    number = text.rstrip("smh")
    if not number.isdigit() or int(number) < 1 or text == number or len(text) - len(number) != 1:
        _fail(field, "a duration such as 15s, 1m or 1h", value)
    return text


def _admin(admin_url):
    parts = urlsplit(str(admin_url))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        _fail("admin_url", "an http:// or https:// URL of the orchestrator's admin listener", admin_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = "[%s]" % parts.hostname if ":" in parts.hostname else parts.hostname
    return parts.scheme, "%s:%d" % (host, port), parts.path.rstrip("/") + "/metrics"


def _workers(plan):
    """One static group per model container: its address and its labels."""
    if not isinstance(plan, dict) or not isinstance(plan.get("nodes"), list):
        _fail("_input", "a model_placement plan ({models, default, nodes})", plan)
    groups = []
    for node in plan["nodes"]:
        if node.get("address") in (None, ""):
            raise AnsibleFilterError(
                "prometheus_config: worker node %s has no fleet_private_address (give the plan of "
                "the inventory's worker hosts, not a count)" % node.get("node")
            )
        for served in node["models"]:
            for name, port in zip(served["container_names"], served["ports"], strict=True):
                groups.append(
                    {
                        "targets": ["%s:%d" % (node["address"], port)],
                        "labels": {"node": node["node"], "container": name, "model": served["name"]},
                    }
                )
    return groups


def prometheus_config(
    plan,
    *,
    node,
    edge_metrics_port,
    admin_url,
    admin_token_file="",
    scrape_interval="15s",
    evaluation_interval="15s",
    scrape_timeout="10s",
    rule_files=(),
):
    """``prometheus.yml`` as a dict: job ``edge`` (HAProxy's exporter on loopback
    ``edge_metrics_port``), job ``orchestrator`` (``admin_url`` + ``/metrics``, with the
    admin token from ``admin_token_file`` as a Bearer credential when one is given), job
    ``worker`` (one target per container of the ``model_placement`` ``plan``, labelled
    ``node``, ``container`` and ``model``). The edge and orchestrator targets carry the
    orchestrator node's name as ``node``."""
    scheme, target, path = _admin(admin_url)
    orchestrator = {
        "job_name": "orchestrator",
        "scheme": scheme,
        "metrics_path": path,
        "static_configs": [{"targets": [target], "labels": {"node": str(node)}}],
    }
    if admin_token_file:
        orchestrator["authorization"] = {"type": "Bearer", "credentials_file": str(admin_token_file)}
    interval = _duration("scrape_interval", scrape_interval)
    timeout = _duration("scrape_timeout", scrape_timeout)
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": timeout,
            "evaluation_interval": _duration("evaluation_interval", evaluation_interval),
        },
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {
                "job_name": "edge",
                "static_configs": [
                    {
                        "targets": ["127.0.0.1:%d" % _port("edge_metrics_port", edge_metrics_port)],
                        "labels": {"node": str(node)},
                    }
                ],
            },
            orchestrator,
            {"job_name": "worker", "static_configs": _workers(plan)},
        ],
    }


class FilterModule:
    def filters(self):
        return {"prometheus_config": prometheus_config}
