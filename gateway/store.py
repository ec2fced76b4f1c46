"""The gateway's durable state: one SQLite database in WAL mode.

Tables: ``queue_alarm``, ``queue_status``, ``queue_telemetry`` (records
waiting for their upstream PUBACK; one table per lane, so that the row id is
the only index and acknowledged runs are deleted by range),
``windows`` (replay windows per device and protocol lane), ``quarantine``
(a bounded sample of rejected messages), ``counters`` (every count by
reason), ``liveness``, ``cmd_counter`` and ``meta``.

``commit()`` is the group commit: the records of a batch, their replay
windows, the counters, the quarantine sample, the deletions of upstream-
acknowledged records and liveness changes go into ONE transaction. Only
after it returns does the gateway acknowledge the batch to the local broker.

Durability: ``synchronous=NORMAL`` in WAL mode survives a crash of the
process (the commit is in the WAL file); on power loss the last commits
before the next checkpoint may roll back (the file stays consistent). With
``sync = "full"`` every commit is fsynced and survives power loss too.
One writer: the gateway's committer thread (the CLI only allocates command
counters, in short transactions, under SQLite's lock).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway import lanes
from gateway.config import LanePolicy
from gateway.errors import EVICTED_QUOTA, EXPIRED_TTL, StoreError
from gateway.liveness import DeviceLiveness
from gateway.pipeline import LANE_NAMES, LANE_STATUS, liveness_record
from protocol.replay import ReplayWindow

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue_alarm(id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL, size INTEGER NOT NULL, rec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queue_status(id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL, size INTEGER NOT NULL, rec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queue_telemetry(id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL, size INTEGER NOT NULL, rec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS windows(device TEXT NOT NULL, lane INTEGER NOT NULL,
    state BLOB NOT NULL, PRIMARY KEY(device, lane)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantine(id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
    reason TEXT NOT NULL, device TEXT, topic TEXT, detail TEXT, sample BLOB);
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS liveness(device TEXT PRIMARY KEY, state TEXT, since REAL, reason TEXT,
    last_seen REAL, hb_interval_s REAL, emitted TEXT, emitted_at REAL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cmd_counter(device TEXT PRIMARY KEY, epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL) WITHOUT ROWID;
"""

TABLES = tuple("queue_" + name for name in LANE_NAMES)
NEW_RECORD = tuple[int, float, str]          # lane, received_at, REC json
ACKED = tuple[int, int, int]                 # row id, lane, size
QUARANTINE_ROW = tuple[float, str, str | None, str, str, bytes]


@dataclass
class CommitBatch:
    records: list[NEW_RECORD] = field(default_factory=list)
    windows: dict[tuple[str, int], ReplayWindow] = field(default_factory=dict)
    quarantine: list[QUARANTINE_ROW] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    acked: list[ACKED] = field(default_factory=list)
    liveness: dict[str, DeviceLiveness] = field(default_factory=dict)
    transitions: list[tuple[str, str, float, str]] = field(default_factory=list)

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def empty(self) -> bool:
        return not (self.records or self.windows or self.quarantine or self.counts
                    or self.acked or self.liveness or self.transitions)


def connect(path: Path, sync: str = "normal", readonly: bool = False) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10.0)
    db.execute("PRAGMA busy_timeout=10000")
    if not readonly:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError("cannot put %s in WAL mode (%s)" % (path, mode))
        db.execute("PRAGMA synchronous=%s" % ("FULL" if sync == "full" else "NORMAL"))
        db.executescript(SCHEMA)
    return db


class Store:
    """The writer side (one per gateway; used from the committer thread only)."""

    def __init__(self, path: Path, policies: tuple[LanePolicy, ...], gateway_id: str,
                 sync: str = "normal", quarantine_max: int = 1000,
                 ttl_every_s: float = 5.0) -> None:
        self.path = path
        self.policies = policies
        self.gateway_id = gateway_id
        self.quarantine_max = quarantine_max
        self.db = connect(path, sync)
        self.counters: dict[str, int] = dict(self.db.execute("SELECT name, value FROM counters"))
        self.lane_rows = [0] * len(LANE_NAMES)
        self.lane_bytes = [0] * len(LANE_NAMES)
        self._recount()
        self.over_quota = [False] * len(LANE_NAMES)
        self.ttl_every_s = ttl_every_s
        self._next_ttl = 0.0

    def close(self) -> None:
        self.db.close()

    # ---- reads used at start ----

    def load_windows(self) -> dict[tuple[str, int], ReplayWindow]:
        return {(d, lane): ReplayWindow.from_bytes(s)
                for d, lane, s in self.db.execute("SELECT device, lane, state FROM windows")}

    def load_liveness(self) -> dict[str, DeviceLiveness]:
        return {r[0]: DeviceLiveness(*r[1:]) for r in self.db.execute(
            "SELECT device, state, since, reason, last_seen, hb_interval_s, emitted, emitted_at"
            " FROM liveness")}

    def meta(self, key: str, default: int = 0) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return int(row[0]) if row else default

    def bump_meta(self, key: str) -> int:
        """Increment and return a persisted counter (e.g. the command epoch)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            v = self.meta(key) + 1
            self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", (key, v))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return v

    # ---- the group commit ----

    def commit(self, b: CommitBatch, now: float | None = None) -> None:
        now = time.time() if now is None else now
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            self._apply(b, now)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _apply(self, b: CommitBatch, now: float) -> None:
        db = self.db
        if b.acked:
            self._delete_acked(b)
        if b.transitions:
            n = self.meta("liveness_n")
            for device, state, since, reason in b.transitions:
                n += 1
                _, rec = liveness_record(self.gateway_id, device, n, state, since, reason)
                b.records.append((LANE_STATUS, now, rec))
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('liveness_n', ?)", (n,))
            b.count("liveness_emitted", len(b.transitions))
        if b.records:
            by_lane: list[list[tuple[float, int, str]]] = [[] for _ in TABLES]
            for lane, t, rec in b.records:
                by_lane[lane].append((t, len(rec), rec))
            for lane, rows in enumerate(by_lane):
                if rows:
                    db.executemany("INSERT INTO %s(received_at, size, rec) VALUES(?,?,?)"
                                   % TABLES[lane], rows)
                    self.lane_rows[lane] += len(rows)
                    self.lane_bytes[lane] += sum(r[1] for r in rows)
            self._enforce_quota(b)
        if b.windows:
            db.executemany("INSERT OR REPLACE INTO windows(device, lane, state) VALUES(?,?,?)",
                           [(d, lane, w.to_bytes()) for (d, lane), w in b.windows.items()])
        if b.quarantine and self.quarantine_max > 0:
            cur = db.executemany("INSERT INTO quarantine(at, reason, device, topic, detail, sample)"
                                 " VALUES(?,?,?,?,?,?)", b.quarantine[-self.quarantine_max:])
            last = db.execute("SELECT MAX(id) FROM quarantine").fetchone()[0] or 0
            db.execute("DELETE FROM quarantine WHERE id <= ?", (last - self.quarantine_max,))
            del cur
        if b.liveness:
            db.executemany("INSERT OR REPLACE INTO liveness VALUES(?,?,?,?,?,?,?,?)",
                           [(d, e.state, e.since, e.reason, e.last_seen, e.hb_interval_s,
                             e.emitted, e.emitted_at) for d, e in b.liveness.items()])
        if now >= self._next_ttl:
            self._next_ttl = now + self.ttl_every_s
            self._expire(b, now)
        if b.counts:
            for k, v in b.counts.items():
                self.counters[k] = self.counters.get(k, 0) + v
            db.executemany("INSERT OR REPLACE INTO counters(name, value) VALUES(?, ?)",
                           [(k, self.counters[k]) for k in b.counts])

    def ttl_due(self, now: float) -> bool:
        return now >= self._next_ttl

    def _delete_acked(self, b: CommitBatch) -> None:
        """Delete acknowledged rows, by id ranges (acks come in runs of consecutive ids)."""
        deleted = 0
        by_lane: list[list[int]] = [[] for _ in TABLES]
        for rid, lane, _ in b.acked:
            by_lane[lane].append(rid)
        for lane, ids in enumerate(by_lane):
            if not ids:
                continue
            ids.sort()
            runs = []
            start = prev = ids[0]
            for i in ids[1:]:
                if i != prev + 1:
                    runs.append((start, prev))
                    start = i
                prev = i
            runs.append((start, prev))
            for lo, hi in runs:
                deleted += self.db.execute("DELETE FROM %s WHERE id BETWEEN ? AND ?"
                                           % TABLES[lane], (lo, hi)).rowcount
        if deleted == len(b.acked):
            for _, lane, size in b.acked:
                self.lane_rows[lane] -= 1
                self.lane_bytes[lane] -= size
        else:  # some were evicted or expired meanwhile (or acked twice); recount exactly
            self._recount()
        b.count("forwarded", deleted)

    def _recount(self) -> None:
        for lane, table in enumerate(TABLES):
            n, size = self.db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM " + table
                                      ).fetchone()
            self.lane_rows[lane], self.lane_bytes[lane] = n, size

    def _drop(self, lane: int, ids: list[int], freed: int, reason: str, b: CommitBatch) -> None:
        self.db.executemany("DELETE FROM %s WHERE id=?" % TABLES[lane], [(i,) for i in ids])
        self.lane_rows[lane] -= len(ids)
        self.lane_bytes[lane] -= freed
        b.count("dropped:%s:%s" % (reason, LANE_NAMES[lane]), len(ids))

    def _enforce_quota(self, b: CommitBatch) -> None:
        for lane, policy in enumerate(self.policies):
            need = lanes.bytes_to_free(self.lane_bytes[lane], policy)
            while need > 0:
                rows = self.db.execute("SELECT id, size FROM %s ORDER BY id LIMIT 2000"
                                       % TABLES[lane]).fetchall()
                if not rows:
                    break
                ids, freed = lanes.pick_oldest(rows, need)
                self._drop(lane, ids, freed, EVICTED_QUOTA, b)
                need -= freed
            alert = lanes.over_quota_alert(self.lane_bytes[lane], policy)
            if alert and not self.over_quota[lane]:
                b.count("alert:quota:%s" % LANE_NAMES[lane])
            self.over_quota[lane] = alert

    def _expire(self, b: CommitBatch, now: float) -> None:
        for lane, policy in enumerate(self.policies):
            cutoff = lanes.ttl_cutoff(now, policy)
            if cutoff is None:
                continue
            while True:
                rows = self.db.execute("SELECT id, received_at, size FROM %s ORDER BY id"
                                       " LIMIT 2000" % TABLES[lane]).fetchall()
                old = [(i, s) for i, t, s in rows if t < cutoff]
                if old:
                    self._drop(lane, [i for i, _ in old], sum(s for _, s in old), EXPIRED_TTL, b)
                if len(old) < 2000:
                    break


class Reader:
    """A read connection (forwarder, status, metrics); WAL lets it read beside the writer."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise StoreError("no store at %s" % path)
        self.db = connect(path, readonly=True)

    def close(self) -> None:
        self.db.close()

    def fetch(self, lane: int, after: int, limit: int) -> list[tuple[int, int, str]]:
        """(id, size, REC) of the oldest records of ``lane`` with id > ``after``."""
        return self.db.execute("SELECT id, size, rec FROM %s WHERE id>? ORDER BY id LIMIT ?"
                               % TABLES[lane], (after, limit)).fetchall()

    def lane_stats(self) -> list[tuple[int, int, float | None]]:
        """Per lane: (records, bytes, received_at of the oldest)."""
        out = []
        for lane in range(len(LANE_NAMES)):
            n, size = self.db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM "
                                      + TABLES[lane]).fetchone()
            row = self.db.execute("SELECT received_at FROM %s ORDER BY id LIMIT 1"
                                  % TABLES[lane]).fetchone()
            out.append((n, size, row[0] if row else None))
        return out

    def oldest(self, lane: int) -> float | None:
        row = self.db.execute("SELECT received_at FROM %s ORDER BY id LIMIT 1"
                              % TABLES[lane]).fetchone()
        return float(row[0]) if row else None

    def counters(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT name, value FROM counters"))

    def liveness(self) -> dict[str, tuple[str, float, str]]:
        return {d: (s, since, r) for d, s, since, r in self.db.execute(
            "SELECT device, state, since, reason FROM liveness ORDER BY device")}

    def quarantine(self, limit: int = 50) -> list[tuple[float, str, str | None, str, str]]:
        return self.db.execute("SELECT at, reason, device, topic, detail FROM quarantine"
                               " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()


def next_command_id(path: Path, device: str) -> tuple[int, int]:
    """Allocate (epoch, seq) for a downlink to ``device`` (persisted, never reused).

    The epoch is the gateway's command epoch (bumped at every gateway start);
    seq restarts at 1 when the epoch moves on.
    """
    db = connect(path)
    try:
        db.execute("BEGIN IMMEDIATE")
        row = db.execute("SELECT value FROM meta WHERE key='cmd_epoch'").fetchone()
        epoch = max(int(row[0]) if row else 0, 1)
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('cmd_epoch', ?)", (epoch,))
        cur = db.execute("SELECT epoch, seq FROM cmd_counter WHERE device=?", (device,)).fetchone()
        seq = cur[1] + 1 if cur and cur[0] == epoch else 1
        db.execute("INSERT OR REPLACE INTO cmd_counter(device, epoch, seq) VALUES(?,?,?)",
                   (device, epoch, seq))
        db.execute("COMMIT")
        return epoch, seq
    finally:
        db.close()

