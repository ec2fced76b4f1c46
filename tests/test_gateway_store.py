"""Lane rules (pure) and the SQLite store: quota, TTL, windows, counters, crash safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import lanes
from gateway.config import DEFAULT_LANES, LanePolicy
from gateway.liveness import DeviceLiveness
from gateway.pipeline import LANE_ALARM, LANE_STATUS, LANE_TELEMETRY
from gateway.store import CommitBatch, Reader, Store, next_command_id
from protocol.replay import ReplayWindow

ALARM, STATUS, TELEMETRY = DEFAULT_LANES
ROOT = Path(__file__).resolve().parent.parent


def small_lanes(kb: float) -> tuple[LanePolicy, LanePolicy, LanePolicy]:
    q = kb / 1024
    return (LanePolicy(q, 0, False), LanePolicy(q, 3600, True), LanePolicy(q, 3600, True))


def rec(i: int, size: int = 100) -> str:
    return ('{"id":"d:1:%d","pad":"%s"}' % (i, "x" * size))


# ---- pure rules ----

def test_telemetry_over_quota_frees_the_excess() -> None:
    p = LanePolicy(quota_mb=1, ttl_s=0, evictable=True)
    assert lanes.bytes_to_free(p.quota_bytes + 10, p) == 10
    assert lanes.bytes_to_free(p.quota_bytes, p) == 0


def test_alarm_lane_over_quota_alerts_and_frees_nothing() -> None:
    assert lanes.bytes_to_free(ALARM.quota_bytes * 2, ALARM) == 0
    assert lanes.over_quota_alert(ALARM.quota_bytes * 2, ALARM)
    assert not lanes.over_quota_alert(TELEMETRY.quota_bytes * 2, TELEMETRY)


def test_pick_oldest_takes_rows_in_order_until_enough() -> None:
    assert lanes.pick_oldest([(1, 10), (2, 10), (3, 10)], 15) == ([1, 2], 20)


def test_ttl_zero_never_expires() -> None:
    assert lanes.ttl_cutoff(1000.0, ALARM) is None
    assert lanes.ttl_cutoff(1000.0, LanePolicy(1, 100, True)) == 900.0


# ---- store ----

def open_store(tmp: Path, policies: tuple[LanePolicy, ...] = DEFAULT_LANES, **kw: object
               ) -> Store:
    return Store(tmp / "gw.db", policies, "gw-test", **kw)  # type: ignore[arg-type]


def test_store_uses_wal(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.close()


def test_quota_evicts_oldest_telemetry_and_counts_it(tmp_path: Path) -> None:
    s = open_store(tmp_path, small_lanes(2))           # 2 KiB per lane
    now = time.time()
    b = CommitBatch(records=[(LANE_TELEMETRY, now, rec(i)) for i in range(60)])
    s.commit(b, now)
    r = Reader(tmp_path / "gw.db")
    kept = [row[2] for row in r.fetch(LANE_TELEMETRY, 0, 1000)]
    assert s.lane_bytes[LANE_TELEMETRY] <= 2048
    assert kept == [rec(i) for i in range(60 - len(kept), 60)]        # the newest survive
    assert s.counters["dropped:evicted_quota:telemetry"] == 60 - len(kept)


def test_quota_never_evicts_alarms_and_raises_alert(tmp_path: Path) -> None:
    s = open_store(tmp_path, small_lanes(2))
    now = time.time()
    s.commit(CommitBatch(records=[(LANE_ALARM, now, rec(i)) for i in range(60)]), now)
    assert s.lane_rows[LANE_ALARM] == 60
    assert s.counters["alert:quota:alarm"] == 1
    assert s.over_quota[LANE_ALARM]
    assert not any(k.startswith("dropped") for k in s.counters)


def test_ttl_expires_old_telemetry_not_alarms(tmp_path: Path) -> None:
    s = open_store(tmp_path, small_lanes(1000))
    t0 = 1_000_000.0
    s.commit(CommitBatch(records=[(LANE_TELEMETRY, t0, rec(1)), (LANE_ALARM, t0, rec(2)),
                                  (LANE_STATUS, t0 + 3000, rec(3))]), t0)
    s.commit(CommitBatch(counts={"tick": 1}), t0 + 3601)
    assert s.lane_rows == [1, 1, 0]
    assert s.counters["dropped:expired_ttl:telemetry"] == 1


def test_acked_records_are_deleted_and_counted_forwarded(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.commit(CommitBatch(records=[(LANE_TELEMETRY, time.time(), rec(i)) for i in range(5)]))
    rows = Reader(tmp_path / "gw.db").fetch(LANE_TELEMETRY, 0, 10)
    s.commit(CommitBatch(acked=[(rid, LANE_TELEMETRY, size) for rid, size, _ in rows[:3]]))
    assert s.lane_rows[LANE_TELEMETRY] == 2 and s.counters["forwarded"] == 3


def test_row_ids_never_reused_after_queue_empties(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.commit(CommitBatch(records=[(LANE_TELEMETRY, time.time(), rec(1))]))
    r = Reader(tmp_path / "gw.db")
    (rid, size, _), = r.fetch(LANE_TELEMETRY, 0, 10)
    s.commit(CommitBatch(acked=[(rid, LANE_TELEMETRY, size)]))
    s.commit(CommitBatch(records=[(LANE_TELEMETRY, time.time(), rec(2))]))
    assert r.fetch(LANE_TELEMETRY, rid, 10)[0][0] > rid


def test_windows_counters_liveness_survive_reopen(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    w = ReplayWindow().marked(3, 17)
    live = DeviceLiveness("online", 5.0, "record", 6.0, 30.0, "online", 5.0)
    s.commit(CommitBatch(windows={("d1", 0): w}, counts={"accepted": 4},
                         liveness={"d1": live}))
    s.close()
    s2 = open_store(tmp_path)
    assert s2.load_windows() == {("d1", 0): w}
    assert s2.counters["accepted"] == 4
    assert s2.load_liveness() == {"d1": live}


def test_liveness_transitions_become_status_records_with_persistent_counter(
        tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.commit(CommitBatch(transitions=[("d1", "online", 1.0, "record")]))
    s.close()
    s = open_store(tmp_path)
    s.commit(CommitBatch(transitions=[("d1", "offline", 2.0, "last_will")]))
    recs = [r[2] for r in Reader(tmp_path / "gw.db").fetch(LANE_STATUS, 0, 10)]
    assert '"id":"liveness:gw-test:d1:1"' in recs[0]
    assert '"id":"liveness:gw-test:d1:2"' in recs[1] and '"state":"offline"' in recs[1]


def test_quarantine_keeps_a_bounded_newest_sample(tmp_path: Path) -> None:
    s = open_store(tmp_path, quarantine_max=10)
    for i in range(5):
        s.commit(CommitBatch(quarantine=[(float(i), "bad_signature", "d1", "t", str(j), b"x")
                                         for j in range(7)]))
    rows = Reader(tmp_path / "gw.db").quarantine(100)
    assert len(rows) == 10 and rows[0][0] == 4.0


def test_command_counter_is_persistent_and_monotonic(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    e1 = s.bump_meta("cmd_epoch")
    a = next_command_id(tmp_path / "gw.db", "d1")
    b = next_command_id(tmp_path / "gw.db", "d1")
    e2 = s.bump_meta("cmd_epoch")                       # gateway restart
    c = next_command_id(tmp_path / "gw.db", "d1")
    assert a == (e1, 1) and b == (e1, 2) and c == (e2, 1) and e2 > e1


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["add", "ack"]), st.integers(0, 2),
                              st.integers(1, 30)), max_size=25))
def test_property_every_record_is_queued_forwarded_or_counted_dropped(
        tmp_path_factory: object, ops: list[tuple[str, int, int]]) -> None:
    tmp = Path(str(tmp_path_factory.mktemp("prop")))  # type: ignore[attr-defined]
    s = open_store(tmp, small_lanes(3))
    r = Reader(tmp / "gw.db")
    added = 0
    alarms = 0
    for op, lane, n in ops:
        if op == "add":
            s.commit(CommitBatch(records=[(lane, time.time(), rec(i, 50)) for i in range(n)]))
            added += n
            alarms += n if lane == LANE_ALARM else 0
        else:
            rows = r.fetch(lane, 0, n)
            s.commit(CommitBatch(acked=[(i, lane, size) for i, size, _ in rows]))
    dropped = sum(v for k, v in s.counters.items() if k.startswith("dropped:"))
    queued = sum(len(r.fetch(ln, 0, 10**6)) for ln in range(3))
    assert queued == sum(s.lane_rows)
    assert added == queued + s.counters.get("forwarded", 0) + dropped
    assert not any(k.endswith(":alarm") for k in s.counters if k.startswith("dropped:"))
    r.close()
    s.close()


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from gateway.config import DEFAULT_LANES
    from gateway.store import CommitBatch, Store
    s = Store(Path(sys.argv[1]), DEFAULT_LANES, "gw-test")
    i = 0
    while True:
        b = CommitBatch(records=[(2, time.time(), '{"n":%d}' % (i * 100 + j)) for j in range(100)],
                        counts={"accepted": 100})
        s.commit(b)
        i += 1
        sys.stdout.write("%d\\n" % i)
        sys.stdout.flush()
""")


def test_store_survives_sigkill_mid_commit_with_every_committed_batch(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    for _ in range(3):
        p = subprocess.Popen([sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE,
                             cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert p.stdout is not None
        reported = 0
        deadline = time.monotonic() + 20
        while reported < 30 and time.monotonic() < deadline:
            reported = int(p.stdout.readline() or reported)
        p.send_signal(signal.SIGKILL)
        p.wait()
        con = sqlite3.connect(str(db))
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = sum(con.execute("SELECT COUNT(*) FROM queue_" + lane).fetchone()[0]
                   for lane in ("alarm", "status", "telemetry"))
        accepted = con.execute("SELECT value FROM counters WHERE name='accepted'").fetchone()[0]
        con.close()
        assert rows == accepted                 # records and counters commit together
        assert rows % 100 == 0                  # no torn batch
        assert rows >= 100 * reported or reported == 0
