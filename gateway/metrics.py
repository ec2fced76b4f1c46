"""Figures of a gateway, as Prometheus metrics and for ``gateway status``.

Counters live in the store's ``counters`` table under names such as
``accepted``, ``rejected:<reason>``, ``duplicate``, ``forwarded``,
``dropped:<reason>:<lane>``, ``alert:quota:<lane>`` and ``liveness_emitted``;
``figures()`` turns them (and lane statistics) into one structure that
both the CLI and the metrics endpoint show.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.pipeline import LANE_NAMES

if TYPE_CHECKING:
    from gateway.service import Gateway


def figures(counters: dict[str, int], lanes: list[tuple[int, int, float | None]],
            devices: dict[str, int], now: float) -> dict[str, Any]:
    rejected: dict[str, int] = {}
    dropped: dict[str, int] = {}
    alerts: dict[str, int] = {}
    for k, v in counters.items():
        head, _, rest = k.partition(":")
        if head == "rejected":
            rejected[rest] = v
        elif head == "dropped":
            dropped[rest] = v
        elif head == "alert":
            alerts[rest] = v
    return {
        "accepted": counters.get("accepted", 0),
        "forwarded": counters.get("forwarded", 0),
        "duplicates": counters.get("duplicate", 0),
        "liveness_emitted": counters.get("liveness_emitted", 0),
        "rejected": dict(sorted(rejected.items())),
        "dropped": dict(sorted(dropped.items())),
        "alerts": dict(sorted(alerts.items())),
        "lanes": {LANE_NAMES[i]: {"depth": n, "bytes": b,
                                  "oldest_age_s": None if t is None else round(now - t, 3)}
                  for i, (n, b, t) in enumerate(lanes)},
        "devices": devices,
    }


class GatewayCollector(Collector):
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def collect(self) -> Iterator[Any]:
        gw = self.gw
        rows, sizes = gw.lane_snapshot
        lanes: list[tuple[int, int, float | None]] = [
            (rows[i], sizes[i], None) for i in range(len(LANE_NAMES))]
        f = figures(gw.snapshot, lanes, gw.liveness.counts(), time.time())
        p = "fieldtrace_gateway_"
        for name, key, doc in (("accepted", "accepted", "records accepted and committed"),
                               ("forwarded", "forwarded", "records acknowledged upstream"),
                               ("duplicates", "duplicates", "duplicates dropped (QoS 1 resend)"),
                               ("liveness_transitions", "liveness_emitted",
                                "liveness transitions sent upstream")):
            yield CounterMetricFamily(p + name, doc, value=f[key])
        c = CounterMetricFamily(p + "rejected", "messages rejected, by reason", labels=["reason"])
        for r, v in f["rejected"].items():
            c.add_metric([r], v)
        yield c
        c = CounterMetricFamily(p + "dropped", "accepted records dropped later",
                                labels=["reason", "lane"])
        for r, v in f["dropped"].items():
            reason, _, lane = r.partition(":")
            c.add_metric([reason, lane], v)
        yield c
        c = CounterMetricFamily(p + "alerts", "alerts raised (e.g. alarm lane over quota)",
                                labels=["alert"])
        for r, v in f["alerts"].items():
            c.add_metric([r], v)
        yield c
        g = GaugeMetricFamily(p + "queue_depth", "records waiting for upstream", labels=["lane"])
        b = GaugeMetricFamily(p + "queue_bytes", "bytes waiting for upstream", labels=["lane"])
        for lane, d in f["lanes"].items():
            g.add_metric([lane], d["depth"])
            b.add_metric([lane], d["bytes"])
        yield g
        yield b
        g = GaugeMetricFamily(p + "devices", "devices by liveness state", labels=["state"])
        for s, n in f["devices"].items():
            g.add_metric([s], n)
        yield g
        yield GaugeMetricFamily(p + "upstream_connected", "1 while upstream is connected",
                                value=1 if gw.forwarder.connected.is_set() else 0)
        yield GaugeMetricFamily(p + "ingest_queue", "messages waiting for the committer",
                                value=len(gw.inq))
        yield CounterMetricFamily(p + "ingest_backpressure", "times the ingest queue was full",
                                  value=gw.inq.full_waits)
        yield CounterMetricFamily(p + "upstream_batches", "batches published upstream",
                                  value=gw.forwarder.batches_sent)
        yield GaugeMetricFamily(p + "commit_seconds", "duration of the last group commit",
                                value=gw.last_commit_s)


def serve(gw: Gateway) -> CollectorRegistry | None:
    if not gw.cfg.metrics.port:
        return None
    reg = CollectorRegistry()
    reg.register(GatewayCollector(gw))
    start_http_server(gw.cfg.metrics.port, gw.cfg.metrics.host, registry=reg)
    return reg
