"""What a load run found: the summary (dict and text), the JSON file, the latency histogram."""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onnxfleet.load.runner import Results

PLOT_MISSING = "--histogram needs matplotlib: pip install 'onnxfleet[plot]'"
# With a rate, it was held when both: the achieved rate is at least this share of the
# asked one, and 99 % of the requests were sent within LAG_BOUND_S of their scheduled start.
HELD_SHARE = 0.95
LAG_BOUND_S = 1.0


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty sequence."""
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _spread(values: Sequence[float], keys: Sequence[str]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    named = {
        "min": ordered[0],
        "mean": sum(ordered) / len(ordered),
        "max": ordered[-1],
        **{key: percentile(ordered, float(key[1:])) for key in keys if key.startswith("p")},
    }
    return {key: round(named[key], 3) for key in keys}


def _counts(values: Sequence[Any]) -> dict[str, int]:
    return {str(key): count for key, count in sorted(Counter(values).items())}


def rate_verdict(results: Results) -> dict[str, Any] | None:
    """With a rate: the asked and achieved rates and whether it was held (None without).

    Achieved: the intervals between the first send and the last over the time between
    them (None with fewer than two sends: the lag alone decides then).
    """
    rate, records = results.plan.rate, results.records
    if not rate:
        return None
    sends = [r.start_s + r.lag_s for r in records]
    span = max(sends) - min(sends) if sends else 0.0
    achieved = (len(sends) - 1) / span if span > 0 else None
    lag_p99 = percentile(sorted(r.lag_s for r in records), 99) if records else 0.0
    return {
        "asked_rps": rate,
        "achieved_rps": None if achieved is None else round(achieved, 2),
        "held": lag_p99 <= LAG_BOUND_S and (achieved is None or achieved >= HELD_SHARE * rate),
    }


def summarize(results: Results) -> dict[str, Any]:
    """Everything the text summary shows, JSON-ready (latencies in ms)."""
    plan, records = results.plan, results.records
    answered = [r for r in records if r.status is not None]
    waits = [r.queue_wait_ms for r in answered if r.queue_wait_ms is not None]
    duration = results.duration_s
    spread = ("min", "mean", "p50", "p90", "p99", "max")
    return {
        "target": plan.url,
        "planned": {
            "requests": plan.limit,
            "duration_s": plan.duration,
            "concurrency": plan.concurrency,
            "rate_rps": plan.rate,
            "timeout_s": plan.timeout,
            "method": plan.method,
            "bodies": len(plan.bodies or ()),
        },
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(results.started_at)),
        "interrupted": results.interrupted,
        "requests": len(records),
        "succeeded": results.succeeded,
        "failed": results.failed,
        "duration_s": round(duration, 3),
        "throughput_rps": round(len(records) / duration, 2) if duration > 0 else 0.0,
        "rate": rate_verdict(results),
        # only requests that got an answer: a timeout's "latency" is the timeout.
        # With a rate, from each request's scheduled start: the lag behind it counts.
        "latency_ms": _spread([r.latency_s * 1000 for r in answered], spread),
        "service_time_ms": _spread([r.service_s * 1000 for r in answered], spread),
        "schedule_lag_ms": _spread([r.lag_s * 1000 for r in records], ("p50", "p90", "p99", "max"))
        if plan.rate
        else None,
        "queue_wait_ms": _spread(waits, ("p50", "p90", "p99", "max")),
        "status_codes": _counts([r.status for r in answered]),
        "errors": _counts([r.error for r in records if r.error]),
        # non-2xx answers by status and error code: "401 unauthorized", "429 rate_limited"
        "refusals": _counts([f"{r.status} {r.code or ''}".strip() for r in answered if not r.ok]),
        "containers": _counts([r.container for r in answered if r.container]),
        "versions": _counts([r.version for r in answered if r.version]),
    }


# what a refusal or an error usually means for the person running the load
_HINTS = {
    "401": "401: the token is missing or not accepted (--token-file, $ONNXFLEET_TOKEN)",
    "429 rate_limited": "429 rate_limited: the edge limits requests per client address (Retry-After)",
    "429 queue_full": "429 queue_full: the orchestrator's queue is full; the fleet is at capacity",
    "tls": "tls: the server's certificate was not verified; pass the fleet's CA with --cacert",
}


def _hints(summary: dict[str, Any]) -> list[str]:
    seen = {word for name in [*summary["refusals"], *summary["errors"]] for word in (name, name.split()[0])}
    return [hint for key, hint in _HINTS.items() if key in seen]


def _shares(counts: dict[str, int]) -> list[str]:
    total = sum(counts.values())
    width = max(map(len, counts))
    return [f"{name:<{width}}  {count:>7}  {100 * count / total:5.1f}%" for name, count in counts.items()]


def _figures(values: dict[str, float]) -> str:
    return "  ".join(f"{key} {value:.1f}" for key, value in values.items())


def rate_warning(summary: dict[str, Any]) -> str | None:
    """The loud message when the asked rate was not held (None when it was, or none was asked)."""
    rate, lag = summary["rate"], summary["schedule_lag_ms"]
    if rate is None or rate["held"]:
        return None
    achieved = rate["achieved_rps"]
    achieved_text = "-" if achieved is None else f"{achieved:.1f} ({100 * achieved / rate['asked_rps']:.0f}%)"
    behind = (
        f"; requests went out up to {lag['max'] / 1000:.2f} s behind their schedule"
        f" (p99 {lag['p99'] / 1000:.2f} s)"
        if lag
        else ""
    )
    return (
        f"onnxfleet load: WARNING: rate NOT held: asked {rate['asked_rps']:g} requests/s, achieved"
        f" {achieved_text}{behind}. The latency counts from each request's"
        " scheduled start, so it includes that wait; the service time does not. With at most"
        f" -c {summary['planned']['concurrency']} in flight the target answered too slowly (or this"
        " client could not keep up): raise -c or lower --rate. Exit status 3.\n"
    )


def format_summary(summary: dict[str, Any]) -> str:
    """The human summary, one labelled line (or block) per figure."""
    planned = summary["planned"]
    bodies = f"  ({planned['bodies']} bodies, cycled)" if planned["bodies"] > 1 else ""
    lines = [
        ("target", [f"{planned['method']} {summary['target']}{bodies}"]),
        (
            "requests",
            [
                f"{summary['requests']} in {summary['duration_s']:.3f} s with {planned['concurrency']}"
                f" concurrent: {summary['succeeded']} succeeded, {summary['failed']} failed"
                + (" (interrupted)" if summary["interrupted"] else "")
            ],
        ),
        ("throughput", [f"{summary['throughput_rps']:.1f} requests/s"]),
    ]
    rate = summary["rate"]
    if rate:
        verdict = "held" if rate["held"] else "NOT HELD"
        achieved = "-" if rate["achieved_rps"] is None else f"{rate['achieved_rps']:.1f}/s"
        lines.append(("rate", [f"asked {rate['asked_rps']:g}/s  achieved {achieved}  {verdict}"]))
    latency, service = summary["latency_ms"], summary["service_time_ms"]
    if latency:
        # without a rate the two are the same figures: one line
        since = "  (from the scheduled start)" if rate else ""
        lines.append(("latency ms", [_figures(latency) + since]))
        if rate:
            lines.append(("service ms", [_figures(service) + "  (from the send)"]))
    for label, key in (("schedule lag ms", "schedule_lag_ms"), ("queue wait ms", "queue_wait_ms")):
        if summary[key]:
            lines.append((label, [_figures(summary[key])]))
    for label, key in (("status codes", "status_codes"), ("errors", "errors"), ("refusals", "refusals")):
        counts = "  ".join(f"{name} x{count}" for name, count in summary[key].items())
        if counts or key != "refusals":
            lines.append((label, [counts or "none"]))
    hints = _hints(summary)
    if hints:
        lines.append(("hints", hints))
    for label, key in (("containers", "containers"), ("model versions", "versions")):
        if summary[key]:
            lines.append((label, _shares(summary[key])))
    width = max(len(label) for label, _ in lines)
    out: list[str] = []
    for label, values in lines:
        out.extend(f"{label if i == 0 else '':<{width}}  {value}".rstrip() for i, value in enumerate(values))
    return "\n".join(out) + "\n"


def write_json(results: Results, summary: dict[str, Any], path: str, with_requests: bool) -> None:
    """``{"summary": ..., "requests": [...]}`` to ``path`` (``-``: stdout)."""
    document: dict[str, Any] = {"summary": summary}
    if with_requests:
        document["requests"] = [record.to_json() for record in results.records]
    text = json.dumps(document, indent=2) + "\n"
    if path == "-":
        sys.stdout.write(text)
    else:
        Path(path).write_text(text)


def require_matplotlib() -> None:
    """Fail before the run, not after it, when the histogram cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(PLOT_MISSING) from exc


def write_histogram(results: Results, summary: dict[str, Any], path: str) -> None:
    """A PNG histogram of the answered requests' latencies, with p50/p90/p99 marked."""
    from matplotlib.figure import Figure  # Figure alone: no pyplot state, no GUI backend

    latencies = sorted(r.latency_s * 1000 for r in results.records if r.status is not None)
    figure = Figure(figsize=(8, 4.5), dpi=100)
    axes = figure.subplots()
    if latencies:
        axes.hist(latencies, bins=max(10, min(60, int(math.sqrt(len(latencies))) * 2)), color="#4c72b0")
        for q, style in ((50, "-"), (90, "--"), (99, ":")):
            value = percentile(latencies, q)
            axes.axvline(value, color="#c44e52", linestyle=style, label=f"p{q} {value:.1f} ms")
        axes.legend()
    else:
        axes.text(0.5, 0.5, "no request was answered", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("latency (ms)")
    axes.set_ylabel("requests")
    axes.set_title(
        f"{summary['target']}\n{summary['requests']} requests,"
        f" {summary['planned']['concurrency']} concurrent, {summary['throughput_rps']:.1f} req/s,"
        f" {summary['failed']} failed",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, format="png")
