"""Faults with real brokers: SIGKILL, local broker restart, upstream outage, full quota."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from gateway.store import Reader
from gateway.testing import (
    Device, GatewayProcess, Publisher, RunningGateway, wait_until,
)

from .test_gateway_e2e import Site, device_ids

pytestmark = pytest.mark.broker


def fleet(site: Site, n: int) -> list[Device]:
    return [site.device("rec%03d" % i) for i in range(n)]


def mixed_stream(devs: list[Device], n: int, seed: int = 1) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        d = devs[i % len(devs)]
        r = rng.random()
        out.append(d.alarm() if r < 0.02 else d.heartbeat() if r < 0.1 else d.gps())
    return out


def expected_ids(msgs: list[tuple[str, bytes]]) -> set[str]:
    from protocol.codec import decode
    from protocol.topics import parse_topic

    out = set()
    for t, p in msgs:
        env = decode(p)
        out.add("%s:%d:%d" % (parse_topic(t)[0], env.epoch, env.seq))
    return out


def assert_duplicates_identical(records: list[dict[str, Any]]) -> None:
    by_id: dict[str, list[str]] = defaultdict(list)
    for r in records:
        by_id[r["id"]].append(json.dumps(r, sort_keys=True))
    for copies in by_id.values():
        assert len(set(copies)) == 1


def test_sigkill_loop_with_upstream_down_loses_nothing(tmp_path: Path) -> None:
    site = Site(tmp_path, ingest={"linger_ms": 1.0})
    try:
        devs = fleet(site, 8)
        msgs = mixed_stream(devs, 3000)
        site.up.stop()                                   # upstream down throughout
        gw = GatewayProcess(site.cfg_path).start()
        assert gw.wait_subscribed()
        pub = site.publisher()
        done = threading.Event()

        def stream() -> None:
            for i, (t, p) in enumerate(msgs):
                pub.publish(t, p)
                if i % 100 == 99:
                    time.sleep(0.1)
            done.set()

        th = threading.Thread(target=stream)
        th.start()
        kills = 0
        rng = random.Random(3)
        while not done.is_set() or kills < 4:
            time.sleep(rng.uniform(0.05, 0.4))           # while it verifies, commits, acks
            gw.kill()                                    # SIGKILL, anywhere in the pipeline
            kills += 1
            gw.start()
            if kills >= 12:
                break
            assert gw.wait_subscribed()
        th.join()
        assert pub.wait(30)                              # the local broker has every message
        site.up.start()                                  # upstream back
        want = expected_ids(msgs)
        ok = site.collector.wait_for(lambda r: want <= set(device_ids(r)), 60)
        gw.stop()
        got = site.collector.snapshot()
        assert ok, "missing %d of %d" % (len(want - set(device_ids(got))), len(want))
        assert set(device_ids(got)) == want              # nothing forged or invented
        assert_duplicates_identical(got)
        counters = Reader(site.cfg.store_path).counters()
        assert counters["accepted"] == len(want)         # each record accepted exactly once
        assert kills >= 4
        print("kills", kills, "records", len(got), "duplicates", len(got) - len(set(
            device_ids(got))) - sum(r["kind"] == "liveness" for r in got),
            "counters", counters)
    finally:
        site.close()


def test_local_broker_restart_mid_stream_loses_nothing(tmp_path: Path) -> None:
    site = Site(tmp_path, local_persistence=True)
    try:
        devs = fleet(site, 4)
        first, second = mixed_stream(devs, 800, 1), mixed_stream(devs, 800, 2)
        with RunningGateway(site.cfg) as gw:
            pub = site.publisher()
            pub.publish_all(first)
            assert pub.wait(20)
            site.local.restart()                          # graceful: its session state is saved
            assert wait_until(lambda: pub.client.is_connected(), 15)
            pub.publish_all(second)
            assert pub.wait(30)
            want = expected_ids(first + second)
            assert site.collector.wait_for(lambda r: want <= set(device_ids(r)), 40), (
                gw.snapshot)
        assert set(device_ids(site.collector.snapshot())) == want
    finally:
        site.close()


def test_upstream_outage_then_alarms_go_first(tmp_path: Path) -> None:
    site = Site(tmp_path, upstream={"batch_max_records": 200, "max_inflight": 4})
    try:
        devs = fleet(site, 5)
        telemetry = [devs[i % 5].gps() for i in range(2000)]
        alarms = [d.alarm() for d in devs for _ in range(3)]
        site.up.stop()
        with RunningGateway(site.cfg) as gw:
            pub = site.publisher()
            pub.publish_all(telemetry + alarms)           # alarms come last from the devices
            assert pub.wait(20)
            assert wait_until(lambda: gw.snapshot.get("accepted") == 2015, 20)
            site.up.start()
            want = expected_ids(telemetry + alarms)
            assert site.collector.wait_for(lambda r: want <= set(device_ids(r)), 40)
        got = site.collector.snapshot()
        kinds = [r["kind"] for r in got]
        last_alarm = max(i for i, k in enumerate(kinds) if k == "alarm")
        first_gps = min(i for i, k in enumerate(kinds) if k == "gps")
        assert last_alarm < first_gps
        for d in devs:                                    # order kept per device and lane
            seqs = [r["seq"] for r in got if r["device"] == d.device_id and r["kind"] == "gps"]
            assert seqs == sorted(seqs)
    finally:
        site.close()


class FakeClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_long_outage_on_simulated_clock_expires_telemetry_keeps_alarms(tmp_path: Path) -> None:
    site = Site(tmp_path, lanes__telemetry={"ttl_s": 600},
                liveness={"debounce_s": 1.0, "default_hb_interval_s": 60})
    try:
        devs = fleet(site, 3)
        telemetry = [devs[i % 3].gps() for i in range(300)]
        alarms = [d.alarm() for d in devs]
        site.up.stop()
        clock = FakeClock()
        with RunningGateway(site.cfg, clock) as gw:
            pub = site.publisher()
            pub.publish_all(telemetry + alarms)
            assert pub.wait(20)
            assert wait_until(lambda: gw.snapshot.get("accepted") == 303, 20)
            clock.offset = 40 * 60.0                      # a 40-minute outage
            assert wait_until(
                lambda: gw.snapshot.get("dropped:expired_ttl:telemetry") == 300, 20), gw.snapshot
            site.up.start()
            assert site.collector.wait_for(
                lambda r: sum(x["kind"] == "alarm" for x in r) == 3
                and sum(x.get("state") == "offline" for x in r) == 3, 30)
        got = site.collector.snapshot()
        assert not [r for r in got if r["kind"] == "gps"]
        offline = [r for r in got if r.get("state") == "offline"]
        assert {r["reason"] for r in offline} == {"heartbeat_timeout"}
    finally:
        site.close()


def test_full_quota_evicts_telemetry_counts_it_and_keeps_alarms(tmp_path: Path) -> None:
    site = Site(tmp_path, lanes__telemetry={"quota_mb": 0.05}, lanes__alarm={"quota_mb": 0.002})
    try:
        devs = fleet(site, 4)
        telemetry = [devs[i % 4].gps() for i in range(600)]
        alarms = [d.alarm() for d in devs for _ in range(5)]
        site.up.stop()
        with RunningGateway(site.cfg) as gw:
            pub = site.publisher()
            pub.publish_all(telemetry + alarms)
            assert pub.wait(20)
            assert wait_until(lambda: gw.snapshot.get("accepted") == 620, 20)
            evicted = gw.snapshot["dropped:evicted_quota:telemetry"]
            assert evicted > 0
            assert gw.snapshot["alert:quota:alarm"] == 1
            site.up.start()
            assert site.collector.wait_for(
                lambda r: len(device_ids(r)) == 620 - evicted, 30)
        got = site.collector.snapshot()
        assert sum(r["kind"] == "alarm" for r in got) == 20
        assert not any(k.startswith("dropped") and k.endswith(":alarm") for k in gw.snapshot)
    finally:
        site.close()


def test_pub_records_survive_graceful_restart_and_windows_persist(tmp_path: Path) -> None:
    """A replay of records accepted before a restart is refused after it."""
    site = Site(tmp_path)
    try:
        dev = site.device("rec001")
        msgs = [dev.gps() for _ in range(20)]
        with RunningGateway(site.cfg):
            pub = site.publisher()
            pub.publish_all(msgs)
            assert pub.wait(10)
            assert site.collector.wait_for(lambda r: len(device_ids(r)) == 20, 10)
        with RunningGateway(site.cfg) as gw:
            replay = Publisher(site.local.port)
            site.pubs.append(replay)
            replay.publish_all(msgs)
            assert replay.wait(10)
            assert wait_until(lambda: gw.snapshot.get("duplicate") == 20, 10)
        assert len(device_ids(site.collector.snapshot())) == 20
    finally:
        site.close()


def test_the_gateway_process_logs_one_json_object_per_line_and_stops_cleanly_on_sigterm(
        tmp_path: Path) -> None:
    site = Site(tmp_path)
    try:
        dev = site.device("rec001")
        gw = GatewayProcess(site.cfg_path).start()
        assert gw.wait_subscribed()
        pub = site.publisher()
        t, p = dev.gps()
        pub.publish_all([(t, p), (t, p[:-1] + bytes([p[-1] ^ 1]))])
        assert pub.wait(10)
        assert site.collector.wait_for(lambda r: len(device_ids(r)) == 1, 10)
        assert gw.stop() == 0                            # SIGTERM: a clean exit
        lines = [json.loads(line) for line in gw.log.read_text().splitlines() if line]
    finally:
        site.close()
    assert all({"ts", "level", "logger", "msg"} <= set(rec) for rec in lines)
    msgs = [rec["msg"] for rec in lines]
    assert msgs[0] == "gateway started" and msgs[-1] == "gateway stopped", msgs
    rejected = [rec for rec in lines if rec["msg"] == "rejected"]
    assert rejected and rejected[0]["reason"] == "bad_signature"
    assert rejected[0]["device"] == "rec001"


def test_a_backlog_goes_upstream_in_batches_of_at_most_batch_max_records(tmp_path: Path) -> None:
    site = Site(tmp_path, upstream={"batch_max_records": 10})
    try:
        dev = site.device("rec001")
        site.up.stop()
        with RunningGateway(site.cfg) as gw:
            pub = site.publisher()
            pub.publish_all([dev.gps() for _ in range(25)])
            assert wait_until(lambda: gw.snapshot.get("accepted", 0) == 25, 10)
            site.up.start()
            assert site.collector.wait_for(lambda r: len(device_ids(r)) == 25, 30)
        sizes = [len(doc["records"]) for _topic, doc in site.collector.batches
                 if any(r["kind"] == "gps" for r in doc["records"])]
        assert sizes == [10, 10, 5]
    finally:
        site.close()
