"""The end-to-end checker: what the devices produced against what reached upstream.

Three inputs:

* the **produced log** — what the devices say they sent, written by the fleet
  with ``ProducedLog`` (JSON lines, or in memory);
* the **attack log** — every payload the rogue client published, written by
  ``AttackLog`` (JSON lines, or in memory);
* the **upstream stream** — the gateway's batches on ``ft/up/v1/{gw}/{lane}``,
  received by ``Checker`` (paho, QoS 1, persistent session) or fed to the
  pure core ``UpstreamTally.ingest`` in tests.

File formats (one JSON object per line; a torn last line is ignored):

    produced:  {"type": "produced", "id": "rec-0001:3:17", "device": "rec-0001",
                "kind": "gps", "epoch": 3, "seq": 17, "produced_at": 1780000000.25,
                ["expect": false], ["sha256": "<hex of the signed envelope>"]}
    evicted:   {"type": "evicted", "id": "rec-0001:3:18", "device": "rec-0001",
                "at": 1780000001.0, "reason": "outbox_full"}
    attack:    {"attack": "forged", "topic": "ft/v1/rec-0001/gps", "device": "rec-0001",
                "sha256": "<hex of the payload>", "size": 46, "sent_at": 1780000002.5,
                "legit_copy": false, "note": ""}

``expect: false`` marks a record that may legitimately never be sent (a
last will, published only if the device vanishes); it is not lost when it is
missing but is still recognised when it arrives. ``evicted`` is a record the
device dropped by design (a bounded outbox evicting its oldest fixes) and
counted itself: it is reported, not counted as lost. ``legit_copy`` marks an
attack whose payload is byte-identical to a legitimate message (a replay).

Definitions used in the report:

* **forwarded** — distinct produced ids seen upstream (liveness excluded).
* **lost** — produced ids with ``expect`` true, neither seen upstream nor evicted.
* **duplicated** — extra upstream copies of an id (copies − 1, summed).
* **out of order** — per (device, protocol lane: telemetry = gps+hb, alarm,
  status, ack), in the order the checker received them (batch order within a
  message), a record is out of order when a record of the same device and
  lane with a greater (epoch, seq) arrived before it. Repeated ids are not
  counted again. Reported per lane and split into live and backlog (records
  with the backlog flag); ``out_of_order`` in the summary is telemetry +
  alarm, since a last will on the status lane is signed before, and
  published after, the online status by design.
* **attacks forwarded** — upstream records (every copy) that are an attack:
  (device, sha256(envelope)) matches an attack log entry (for entries that
  are byte copies of a legitimate message — ``legit_copy``, or equal to a
  produced ``sha256`` — every copy beyond the one legitimate record), or the
  id matches no produced record, or the envelope differs from the produced
  ``sha256``.
* **unverified** — envelopes that fail end-to-end verification with
  ``protocol.verify`` (with a keys file), or do not decode, or whose header
  disagrees with the record's fields.
* **latency** — checker arrival time minus ``produced_at`` of the first copy;
  percentiles by nearest rank. ``gateway_latency`` uses the record's
  ``received_at`` (gateway receive time) instead.

The run fails (exit status 1) when lost, attacks forwarded, unverified or
malformed upstream messages are non-zero, or when more records arrived than
the checker keeps (``MAX_RECORDS``), since it could then prove nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from protocol.codec import decode
from protocol.errors import KEY_UNKNOWN, UNKNOWN_DEVICE, ProtocolError
from protocol.replay import LANE_BY_KIND, LANE_STATUS
from protocol.topics import KIND_BY_NAME, topic_for
from protocol.verify import DeviceKeys, Limits, verify

UPSTREAM_TOPIC = "ft/up/v1/#"
UPSTREAM_PREFIX = "ft/up/v1/"
UPSTREAM_LANES = ("alarm", "status", "telemetry")
RECORD_KINDS = ("gps", "hb", "alarm", "status", "ack")
LIVENESS = "liveness"
LANE_NAMES = {0: "telemetry", 1: "alarm", 2: "status", 3: "ack", 4: "cmd"}
# upstream topic lane expected for each record kind
UPSTREAM_LANE_OF = {"gps": "telemetry", "hb": "telemetry", "ack": "status",
                    "alarm": "alarm", "status": "status", LIVENESS: "status"}
MAX_UPSTREAM_MESSAGE = 16 * 1024 * 1024
# Records kept in memory by a tally or an in-memory produced log: about 40 minutes
# of a 3,000-device fleet. Beyond it the run cannot be checked and fails.
MAX_RECORDS = 8_000_000
# A record verified end to end may be old (backlog) but not absurdly so.
VERIFY_LIMITS = Limits(max_payload=128, max_future_s=300, max_past_s=30 * 86400)


class CheckerError(RuntimeError):
    pass


def record_id(device: str, epoch: int, seq: int) -> str:
    return "%s:%d:%d" % (device, epoch, seq)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- the produced log -------------------------------------------------------

@dataclass(frozen=True)
class ProducedRecord:
    id: str
    device: str
    kind: str
    epoch: int
    seq: int
    produced_at: float
    expect: bool = True
    sha256: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in RECORD_KINDS:
            raise ValueError("kind must be one of %s, got %r" % (RECORD_KINDS, self.kind))
        if self.id != record_id(self.device, self.epoch, self.seq):
            raise ValueError("id %r does not match device/epoch/seq" % self.id)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "produced", "id": self.id, "device": self.device,
                             "kind": self.kind, "epoch": self.epoch, "seq": self.seq,
                             "produced_at": self.produced_at}
        if not self.expect:
            d["expect"] = False
        if self.sha256 is not None:
            d["sha256"] = self.sha256
        return d


@dataclass(frozen=True)
class EvictedRecord:
    id: str
    device: str
    at: float
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "evicted", "id": self.id, "device": self.device, "at": self.at,
                "reason": self.reason}


class _JsonLines:
    """Append-only JSON lines, in memory and/or a file, thread-safe, flushed in batches."""

    def __init__(self, path: str | Path | None, flush_every: int) -> None:
        self.path = Path(path) if path is not None else None
        self._fh: IO[str] | None = open(self.path, "a") if self.path is not None else None
        self._lock = threading.Lock()
        self._pending = 0
        self._flush_every = max(1, flush_every)

    def _write(self, obj: dict[str, Any]) -> None:
        if self._fh is None:
            return
        self._fh.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self._pending += 1
        if self._pending >= self._flush_every:
            self._fh.flush()
            self._pending = 0

    def flush(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.flush()
                self._pending = 0

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


class ProducedLog(_JsonLines):
    """What the devices produced. ``record`` is called when a device creates a record.

    ``produced_at`` is the host's wall clock (``time.time()``) at creation, not
    the device's own clock, which a fault may have skewed: latencies are
    measured against it.

    With a ``path`` the entries go to an append-only JSON-lines file (several
    processes may append to their own files; ``load_produced`` reads many).
    With ``keep=True`` (the default without a path) they are also kept in
    memory for an in-process checker, up to ``max_kept`` entries; beyond that
    they are not kept, ``overflow`` counts them and ``snapshot`` raises.
    """

    def __init__(self, path: str | Path | None = None, keep: bool | None = None,
                 flush_every: int = 256, max_kept: int = MAX_RECORDS) -> None:
        super().__init__(path, flush_every)
        self.keep = keep if keep is not None else path is None
        self.max_kept = max_kept
        self.records: list[ProducedRecord] = []
        self.evictions: list[EvictedRecord] = []
        self.overflow = 0

    def _room(self) -> bool:
        if len(self.records) + len(self.evictions) < self.max_kept:
            return True
        self.overflow += 1
        return False

    def record(self, device: str, kind: str, epoch: int, seq: int, produced_at: float,
               expect: bool = True, envelope: bytes | None = None) -> ProducedRecord:
        rec = ProducedRecord(record_id(device, epoch, seq), device, kind, epoch, seq,
                             produced_at, expect,
                             sha256_hex(envelope) if envelope is not None else None)
        with self._lock:
            if self.keep and self._room():
                self.records.append(rec)
            self._write(rec.to_json())
        return rec

    def evicted(self, device: str, epoch: int, seq: int, at: float,
                reason: str = "outbox_full") -> EvictedRecord:
        ev = EvictedRecord(record_id(device, epoch, seq), device, at, reason)
        with self._lock:
            if self.keep and self._room():
                self.evictions.append(ev)
            self._write(ev.to_json())
        return ev

    def snapshot(self) -> tuple[list[ProducedRecord], list[EvictedRecord]]:
        with self._lock:
            if self.overflow:
                raise CheckerError("the in-memory produced log overflowed (%d entries not kept);"
                                   " use a file for runs this long" % self.overflow)
            return list(self.records), list(self.evictions)


def _json_lines(path: str | Path) -> Iterator[dict[str, Any]]:
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue   # a torn last line from a crashed writer
            if isinstance(obj, dict):
                yield obj


def load_produced(paths: Iterable[str | Path]
                  ) -> tuple[list[ProducedRecord], list[EvictedRecord]]:
    """Read produced logs; raises CheckerError naming the first bad entry."""
    recs: list[ProducedRecord] = []
    evs: list[EvictedRecord] = []
    for path in paths:
        for n, obj in enumerate(_json_lines(path), 1):
            try:
                if obj.get("type", "produced") == "evicted":
                    evs.append(EvictedRecord(str(obj["id"]), str(obj["device"]),
                                             float(obj["at"]), str(obj.get("reason", ""))))
                else:
                    recs.append(ProducedRecord(
                        str(obj["id"]), str(obj["device"]), str(obj["kind"]),
                        int(obj["epoch"]), int(obj["seq"]), float(obj["produced_at"]),
                        bool(obj.get("expect", True)), obj.get("sha256")))
            except (KeyError, TypeError, ValueError) as e:
                raise CheckerError("%s: entry %d: %s" % (path, n, e)) from None
    return recs, evs


# ---- the attack log ---------------------------------------------------------

ATTACK_KINDS = ("forged", "replayed", "retopiced", "tampered", "malformed", "flood",
                "impersonation")


@dataclass(frozen=True)
class AttackEntry:
    attack: str
    topic: str
    device: str | None
    sha256: str
    size: int
    sent_at: float
    legit_copy: bool = False
    note: str = ""

    def __post_init__(self) -> None:
        if self.attack not in ATTACK_KINDS:
            raise ValueError("attack must be one of %s, got %r" % (ATTACK_KINDS, self.attack))


def device_of_topic(topic: str) -> str | None:
    """The device level of a ``ft/v1/{device}/...`` topic, as an attacker aimed it."""
    parts = topic.split("/")
    if len(parts) >= 3 and parts[0] == "ft" and parts[1] == "v1" and parts[2]:
        return parts[2]
    return None


class AttackLog(_JsonLines):
    """Every payload the rogue client sends, logged before it is published."""

    def __init__(self, path: str | Path | None = None, keep: bool | None = None,
                 flush_every: int = 1) -> None:
        super().__init__(path, flush_every)
        self.keep = keep if keep is not None else path is None
        self.entries: list[AttackEntry] = []

    def record(self, attack: str, topic: str, payload: bytes, sent_at: float,
               legit_copy: bool = False, note: str = "") -> AttackEntry:
        e = AttackEntry(attack, topic, device_of_topic(topic), sha256_hex(payload),
                        len(payload), sent_at, legit_copy, note)
        with self._lock:
            if self.keep:
                self.entries.append(e)
            self._write(asdict(e))
        return e

    def snapshot(self) -> list[AttackEntry]:
        with self._lock:
            return list(self.entries)


def load_attacks(paths: Iterable[str | Path]) -> list[AttackEntry]:
    out: list[AttackEntry] = []
    for path in paths:
        for n, obj in enumerate(_json_lines(path), 1):
            try:
                out.append(AttackEntry(
                    str(obj["attack"]), str(obj["topic"]), obj.get("device"),
                    str(obj["sha256"]), int(obj["size"]), float(obj["sent_at"]),
                    bool(obj.get("legit_copy", False)), str(obj.get("note", ""))))
            except (KeyError, TypeError, ValueError) as e:
                raise CheckerError("%s: entry %d: %s" % (path, n, e)) from None
    return out


# ---- device keys ------------------------------------------------------------

def load_keys(path: str | Path) -> dict[str, DeviceKeys]:
    """Keys in the vectors' format: {"devices": {id: {"keys": {kid: hex}, "revoked": b}}}."""
    try:
        doc = json.loads(Path(path).read_text())
        out: dict[str, DeviceKeys] = {}
        for did, d in doc["devices"].items():
            keys = {int(kid): binascii.unhexlify(khex) for kid, khex in d["keys"].items()}
            out[did] = DeviceKeys(keys, bool(d.get("revoked", False)))
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error) as e:
        raise CheckerError("keys file %s: %s" % (path, e)) from None


# ---- the pure core ----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class UpstreamRecord:
    """One record as received upstream, with where and when it arrived."""

    id: str
    device: str
    kind: str
    epoch: int
    seq: int
    backlog: bool
    received_at: float
    arrived_at: float
    gateway: str
    lane: str
    env_sha256: str | None
    order: int


@dataclass(frozen=True)
class Latency:
    n: int
    p50: float | None
    p99: float | None
    max: float | None
    mean: float | None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of ``values`` (need not be sorted); None when empty."""
    if not values:
        return None
    if not 0 < q <= 100:
        raise ValueError("q must be in (0, 100]")
    s = sorted(values)
    k = max(1, math.ceil(q / 100.0 * len(s)))
    return s[k - 1]


def latency_of(values: Sequence[float]) -> Latency:
    if not values:
        return Latency(0, None, None, None, None)
    return Latency(len(values), percentile(values, 50), percentile(values, 99), max(values),
                   sum(values) / len(values))


@dataclass(frozen=True)
class Report:
    produced: int
    expected: int
    forwarded: int
    lost: int
    lost_by_kind: dict[str, int]
    evicted: int
    duplicated: int
    out_of_order: int
    out_of_order_by_lane: dict[str, dict[str, int]]
    attacks_logged: int
    attacks_forwarded: int
    attacks_forwarded_by_reason: dict[str, int]
    unverified: int
    unverified_by_reason: dict[str, int]
    upstream_messages: int
    upstream_records: int
    upstream_malformed: int
    upstream_overflow: int
    lane_mismatch: int
    liveness: dict[str, int]
    record_latency: Latency
    alarm_latency: Latency
    gateway_latency: Latency
    verified_with_keys: bool
    lost_ids: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.attacks_forwarded == 0 and self.unverified == 0
                and self.upstream_malformed == 0 and self.upstream_overflow == 0)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["lost_ids"] = list(self.lost_ids)
        return d

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    def render(self, console: Any = None) -> None:
        """Print the report as a rich table."""
        from rich.console import Console
        from rich.table import Table

        con = console or Console()
        t = Table(title="fieldtrace end-to-end check: %s" % ("PASS" if self.ok else "FAIL"))
        t.add_column("measure")
        t.add_column("value", justify="right")

        def bad(n: int) -> str:
            return ("[red]%d[/red]" % n) if n else "0"

        def ms(v: float | None) -> str:
            return "-" if v is None else "%.0f ms" % (v * 1000)

        t.add_row("records produced (expected)", "%d (%d)" % (self.produced, self.expected))
        t.add_row("forwarded (unique ids)", str(self.forwarded))
        t.add_row("lost", bad(self.lost))
        if self.lost_by_kind:
            t.add_row("  lost by kind", ", ".join("%s %d" % kv
                                                  for kv in sorted(self.lost_by_kind.items())))
        t.add_row("evicted by devices (counted)", str(self.evicted))
        t.add_row("duplicated (extra copies)", str(self.duplicated))
        t.add_row("out of order (telemetry + alarm)", str(self.out_of_order))
        t.add_row("attack messages logged", str(self.attacks_logged))
        t.add_row("attack messages forwarded", bad(self.attacks_forwarded))
        for reason, n in sorted(self.attacks_forwarded_by_reason.items()):
            t.add_row("  " + reason, bad(n))
        t.add_row("envelopes failing verification" + ("" if self.verified_with_keys
                                                      else " (no keys: decode only)"),
                  bad(self.unverified))
        t.add_row("upstream messages / records", "%d / %d" % (self.upstream_messages,
                                                              self.upstream_records))
        t.add_row("malformed upstream messages", bad(self.upstream_malformed))
        if self.upstream_overflow:
            t.add_row("upstream records beyond the checker's bound", bad(self.upstream_overflow))
        t.add_row("liveness records", ", ".join("%s %d" % kv for kv in
                                                sorted(self.liveness.items())) or "0")
        for name, lat in (("record latency", self.record_latency),
                          ("alarm latency", self.alarm_latency),
                          ("gateway ingest latency", self.gateway_latency)):
            t.add_row(name + " p50 / p99 / max (n)", "%s / %s / %s (%d)" % (
                ms(lat.p50), ms(lat.p99), ms(lat.max), lat.n))
        con.print(t)


class UpstreamTally:
    """Pure: ingest upstream messages, then ``report`` against the logs. Not thread-safe."""

    def __init__(self, keys: dict[str, DeviceKeys] | None = None,
                 limits: Limits = VERIFY_LIMITS, max_records: int = MAX_RECORDS) -> None:
        self.keys = keys
        self.refresh_keys: Callable[[], dict[str, DeviceKeys]] | None = None
        self.limits = limits
        self.max_records = max_records
        self.overflow = 0
        self.records: list[UpstreamRecord] = []
        self.messages = 0
        self.malformed = 0
        self.lane_mismatch = 0
        self.unverified: Counter[str] = Counter()
        self.liveness: Counter[str] = Counter()

    def ingest(self, topic: str, payload: bytes | str, arrived_at: float) -> None:
        self.messages += 1
        parts = topic.split("/")
        if (len(parts) != 5 or not topic.startswith(UPSTREAM_PREFIX)
                or parts[4] not in UPSTREAM_LANES):
            self.malformed += 1
            return
        gw, lane = parts[3], parts[4]
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            self.malformed += 1
            return
        if (not isinstance(doc, dict) or doc.get("gateway") != gw
                or not isinstance(doc.get("records"), list)):
            self.malformed += 1
            return
        for rec in doc["records"]:
            if not self._ingest_record(rec, gw, lane, arrived_at):
                self.malformed += 1

    def _ingest_record(self, rec: Any, gw: str, lane: str, arrived_at: float) -> bool:
        if not isinstance(rec, dict):
            return False
        kind = rec.get("kind")
        if kind == LIVENESS:
            self.liveness[str(rec.get("state", "?"))] += 1
            if lane != UPSTREAM_LANE_OF[LIVENESS]:
                self.lane_mismatch += 1
            return isinstance(rec.get("id"), str) and isinstance(rec.get("device"), str)
        try:
            rid = rec["id"]
            device = rec["device"]
            epoch = int(rec["epoch"])
            seq = int(rec["seq"])
            backlog = bool(rec.get("backlog", False))
            received_at = float(rec["received_at"])
            envelope_b64 = rec["envelope"]
        except (KeyError, TypeError, ValueError):
            return False
        if kind not in RECORD_KINDS or not isinstance(rid, str) or not isinstance(device, str) \
                or not isinstance(envelope_b64, str):
            return False
        if lane != UPSTREAM_LANE_OF[kind]:
            self.lane_mismatch += 1
        env_sha = None
        reason = None
        try:
            raw = base64.b64decode(envelope_b64, validate=True)
        except (binascii.Error, ValueError):
            raw = None
            reason = "envelope_not_base64"
        if raw is not None:
            env_sha = sha256_hex(raw)
            reason = self._verify(rec, device, kind, raw, received_at)
        if rid != record_id(device, epoch, seq):
            reason = reason or "id_mismatch"
        if reason is not None:
            self.unverified[reason] += 1
        if len(self.records) >= self.max_records:
            self.overflow += 1
            return True
        self.records.append(UpstreamRecord(rid, device, kind, epoch, seq, backlog, received_at,
                                           arrived_at, gw, lane, env_sha, len(self.records)))
        return True

    def _verify(self, rec: dict[str, Any], device: str, kind: str, raw: bytes,
                received_at: float) -> str | None:
        """None when the envelope is authentic and agrees with the record, else why not."""
        try:
            topic = topic_for(device, KIND_BY_NAME[kind])
        except ProtocolError as e:
            return e.reason
        if self.keys is not None:
            keys = self.keys
            verdict = verify(topic, raw, keys.get, lambda d, lane: None, int(received_at),
                             self.limits)
            if (not verdict.ok and verdict.reason in (KEY_UNKNOWN, UNKNOWN_DEVICE)
                    and self.refresh_keys is not None):
                # a key rotated (or a device enrolled) since the keys were loaded:
                # re-read the key source once, as a platform would
                self.keys = keys = self.refresh_keys()
                verdict = verify(topic, raw, keys.get, lambda d, lane: None,
                                 int(received_at), self.limits)
            if not verdict.ok:
                return str(verdict.reason)
            env = verdict.envelope
        else:
            try:
                env = decode(raw)
            except ProtocolError as e:
                return e.reason
            if env.kind != KIND_BY_NAME[kind]:
                return "kind_mismatch"
        want = {"epoch": env.epoch, "seq": env.seq, "ts": env.ts, "key_id": env.key_id,
                "backlog": env.backlog, "unsynced": env.unsynced}
        for k, v in want.items():
            if k in rec and rec[k] != v:
                return "field_mismatch"
        return None

    def report(self, produced: Sequence[ProducedRecord], evicted: Sequence[EvictedRecord] = (),
               attacks: Sequence[AttackEntry] = (), max_lost_ids: int = 100) -> Report:
        by_id = {p.id: p for p in produced}
        evicted_ids = {e.id for e in evicted}
        expected = [p for p in produced if p.expect]

        copies: Counter[str] = Counter()
        first: dict[str, UpstreamRecord] = {}
        for r in self.records:
            copies[r.id] += 1
            first.setdefault(r.id, r)
        forwarded = sum(1 for i in first if i in by_id)
        lost_list = [p for p in expected if p.id not in first and p.id not in evicted_ids]
        lost_by_kind = Counter(p.kind for p in lost_list)
        duplicated = sum(n - 1 for n in copies.values())

        # out of order, per (device, lane), first copies in arrival order
        top: dict[tuple[str, int], tuple[int, int]] = {}
        ooo: dict[str, dict[str, int]] = defaultdict(lambda: {"live": 0, "backlog": 0})
        for r in sorted(first.values(), key=lambda r: r.order):
            lane_n = LANE_BY_KIND[KIND_BY_NAME[r.kind]]
            key = (r.device, lane_n)
            pos = (r.epoch, r.seq)
            prev = top.get(key)
            if prev is not None and pos < prev:
                ooo[LANE_NAMES[lane_n]]["backlog" if r.backlog else "live"] += 1
            elif prev is None or pos > prev:
                top[key] = pos
        out_of_order = sum(sum(v.values()) for lane, v in ooo.items()
                           if lane != LANE_NAMES[LANE_STATUS])

        # attacks forwarded
        # key -> True when every attack with it is a byte copy of a legitimate message
        # (flagged by the attacker, or equal to an envelope a device produced)
        legit_shas = {p.sha256 for p in produced if p.sha256 is not None}
        hostile: dict[tuple[str | None, str], bool] = {}
        for a in attacks:
            k = (a.device, a.sha256)
            hostile[k] = hostile.get(k, True) and (a.legit_copy or a.sha256 in legit_shas)
        seen_key: Counter[tuple[str | None, str]] = Counter()
        attack_reasons: Counter[str] = Counter()
        attacks_forwarded = 0
        for r in self.records:
            reasons = []
            p = by_id.get(r.id)
            if p is None:
                reasons.append("unknown_record")
            elif p.sha256 is not None and r.env_sha256 is not None and p.sha256 != r.env_sha256:
                reasons.append("envelope_differs")
            if r.env_sha256 is not None:
                k = (r.device, r.env_sha256)
                only_copies = hostile.get(k)
                seen_key[k] += 1
                if only_copies is False:
                    reasons.append("attack_payload")
                elif only_copies is True and (p is None or seen_key[k] > 1):
                    reasons.append("replayed_copy")
            if reasons:
                attacks_forwarded += 1
                attack_reasons.update(reasons)

        rec_lat: list[float] = []
        alarm_lat: list[float] = []
        gw_lat: list[float] = []
        for rid, r in first.items():
            p = by_id.get(rid)
            if p is None:
                continue
            d = r.arrived_at - p.produced_at
            rec_lat.append(d)
            gw_lat.append(r.received_at - p.produced_at)
            if p.kind == "alarm":
                alarm_lat.append(d)

        return Report(
            produced=len(produced), expected=len(expected), forwarded=forwarded,
            lost=len(lost_list), lost_by_kind=dict(lost_by_kind),
            evicted=len(evicted_ids), duplicated=duplicated, out_of_order=out_of_order,
            out_of_order_by_lane={k: dict(v) for k, v in ooo.items()},
            attacks_logged=len(attacks), attacks_forwarded=attacks_forwarded,
            attacks_forwarded_by_reason=dict(attack_reasons),
            unverified=sum(self.unverified.values()),
            unverified_by_reason=dict(self.unverified),
            upstream_messages=self.messages, upstream_records=len(self.records),
            upstream_malformed=self.malformed, upstream_overflow=self.overflow,
            lane_mismatch=self.lane_mismatch,
            liveness=dict(self.liveness), record_latency=latency_of(rec_lat),
            alarm_latency=latency_of(alarm_lat), gateway_latency=latency_of(gw_lat),
            verified_with_keys=self.keys is not None,
            lost_ids=tuple(p.id for p in lost_list[:max_lost_ids]))


# ---- the MQTT shell ----------------------------------------------------------

@dataclass(frozen=True)
class CheckerConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "ft-checker"
    topic: str = UPSTREAM_TOPIC
    clean_session: bool = False
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError("port must be 1..65535, got %r" % self.port)
        if not self.client_id or len(self.client_id) > 64:
            raise ValueError("client_id must be 1..64 characters")
        if not 0 < self.connect_timeout_s <= 300:
            raise ValueError("connect_timeout_s must be in (0, 300]")


Source = str | Path | Sequence[str | Path]


def _paths(src: Source) -> list[str | Path]:
    if isinstance(src, (str, Path)):
        return [src]
    return list(src)


class Checker:
    """Subscribes upstream (QoS 1, persistent session) and reports on demand.

    ``produced`` and ``attacks`` are live logs (in-process) or file paths read
    at report time, so the checker can be started before the fleet.
    """

    def __init__(self, config: CheckerConfig,
                 produced: ProducedLog | Source | None = None,
                 attacks: AttackLog | Source | None = None,
                 keys: dict[str, DeviceKeys] | None = None,
                 capture: str | Path | None = None,
                 limits: Limits = VERIFY_LIMITS) -> None:
        self.config = config
        self.produced = produced
        self.attacks = attacks
        self.tally = UpstreamTally(keys, limits)
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._last_message = 0.0
        self._capture: IO[str] | None = open(capture, "a") if capture is not None else None
        self._client: Any = None

    def start(self) -> Checker:
        import paho.mqtt.client as mqtt

        cfg = self.config
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                        clean_session=cfg.clean_session, protocol=mqtt.MQTTv311)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.connect_timeout = cfg.connect_timeout_s
        self._client = c
        try:
            c.connect(cfg.host, cfg.port, cfg.keepalive_s)
        except OSError as e:
            raise CheckerError("cannot connect to %s:%d: %s" % (cfg.host, cfg.port, e)) from None
        c.loop_start()
        if not self._subscribed.wait(cfg.connect_timeout_s):
            self.stop()
            raise CheckerError("no subscription to %s on %s:%d within %.0f s"
                               % (cfg.topic, cfg.host, cfg.port, cfg.connect_timeout_s))
        return self

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any,
                    props: Any = None) -> None:
        if not rc.is_failure:
            client.subscribe(self.config.topic, qos=1)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, rcs: Any,
                      props: Any = None) -> None:
        if rcs and not rcs[0].is_failure:
            self._subscribed.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        now = time.time()
        with self._lock:
            self._last_message = time.monotonic()
            if len(msg.payload) > MAX_UPSTREAM_MESSAGE:
                self.tally.messages += 1
                self.tally.malformed += 1
                return
            self.tally.ingest(msg.topic, msg.payload, now)
            if self._capture is not None:
                self._capture.write(json.dumps({"topic": msg.topic, "arrived_at": now,
                                                "payload": msg.payload.decode("utf-8",
                                                                              "replace")})
                                    + "\n")

    def ingest(self, topic: str, payload: bytes | str, arrived_at: float) -> None:
        """Feed a message by hand (an offline capture), under the checker's lock."""
        with self._lock:
            self.tally.ingest(topic, payload, arrived_at)

    @property
    def messages(self) -> int:
        with self._lock:
            return self.tally.messages

    def arrived_ids(self) -> set[str]:
        """Ids of the records that have arrived upstream so far."""
        with self._lock:
            return {r.id for r in self.tally.records}

    def wait_idle(self, idle_s: float, timeout_s: float, min_messages: int = 1) -> bool:
        """Block until ``min_messages`` arrived and none for ``idle_s``; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            now = time.monotonic()
            with self._lock:
                enough = self.tally.messages >= min_messages
                quiet = now - self._last_message >= idle_s
            if enough and quiet:
                return True
            if now >= deadline:
                return False
            time.sleep(min(0.05, max(0.0, deadline - now)))

    def stop(self) -> None:
        c = self._client
        if c is not None:
            self._client = None
            c.disconnect()
            c.loop_stop()
        if self._capture is not None:
            self._capture.close()
            self._capture = None

    def report(self) -> Report:
        if isinstance(self.produced, ProducedLog):
            self.produced.flush()
            produced, evicted = self.produced.snapshot()
        elif self.produced is None:
            produced, evicted = [], []
        else:
            produced, evicted = load_produced(_paths(self.produced))
        if isinstance(self.attacks, AttackLog):
            attacks = self.attacks.snapshot()
        elif self.attacks is None:
            attacks = []
        else:
            attacks = load_attacks(_paths(self.attacks))
        with self._lock:
            return self.tally.report(produced, evicted, attacks)

    def __enter__(self) -> Checker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def replay_capture(checker: Checker, path: str | Path) -> int:
    """Feed a capture written by ``Checker(capture=...)``; returns the message count."""
    n = 0
    for obj in _json_lines(path):
        try:
            checker.ingest(str(obj["topic"]), str(obj["payload"]), float(obj["arrived_at"]))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckerError("%s: capture entry %d: %s" % (path, n + 1, e)) from None
        n += 1
    return n
