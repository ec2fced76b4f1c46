"""Gateway configuration: a TOML file, validated at start into frozen dataclasses.

Every error is a ``ConfigError`` naming the dotted key and the problem, e.g.
``upstream.port: must be an integer in 1..65535, got 'x'``. Unknown keys are
errors too (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from protocol.topics import is_valid_device_id

LANE_NAMES = ("alarm", "status", "telemetry")  # priority order; index = lane number


@dataclass(frozen=True)
class TlsConfig:
    enabled: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "fieldtrace-gateway"
    username: str = ""
    password: str = ""
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    tls: TlsConfig = TlsConfig()


@dataclass(frozen=True)
class LocalConfig:
    broker: BrokerConfig = BrokerConfig()
    subscriptions: tuple[str, ...] = ("ft/v1/+/+",)


@dataclass(frozen=True)
class UpstreamConfig:
    broker: BrokerConfig = BrokerConfig(port=8883, client_id="fieldtrace-gateway-up")
    batch_max_records: int = 500
    batch_max_bytes: int = 256 * 1024
    linger_ms: float = 2.0
    max_inflight: int = 16
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0


@dataclass(frozen=True)
class IngestConfig:
    queue_max: int = 20000        # paho thread -> committer; full = backpressure
    batch_max: int = 1000         # messages per group commit
    linger_ms: float = 2.0        # how long a commit waits to fill a batch
    sync: str = "normal"          # SQLite synchronous: normal | full


@dataclass(frozen=True)
class Limits:
    max_payload: int = 128
    max_topic: int = 64
    max_future_s: int = 300
    max_past_s: int = 30 * 86400


@dataclass(frozen=True)
class LanePolicy:
    quota_mb: float
    ttl_s: float                  # 0 = never expires
    evictable: bool

    @property
    def quota_bytes(self) -> int:
        return int(self.quota_mb * 1024 * 1024)


DEFAULT_LANES = (
    LanePolicy(quota_mb=64, ttl_s=0, evictable=False),          # alarm
    LanePolicy(quota_mb=64, ttl_s=7 * 86400, evictable=True),   # status
    LanePolicy(quota_mb=1024, ttl_s=7 * 86400, evictable=True),  # telemetry
)


@dataclass(frozen=True)
class LivenessConfig:
    default_hb_interval_s: float = 60.0
    unknown_factor: float = 2.5
    offline_factor: float = 6.0
    debounce_s: float = 10.0


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "127.0.0.1"
    port: int = 0                 # 0 = no HTTP endpoint


@dataclass(frozen=True)
class ProvisionConfig:
    """What `devices provision` writes into a device's config.json."""

    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    broker_tls: bool = False
    gps_period_s: int = 60
    hb_interval_s: int = 60


@dataclass(frozen=True)
class GatewayConfig:
    gateway_id: str
    store_path: Path
    registry_path: Path
    local: LocalConfig = LocalConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    ingest: IngestConfig = IngestConfig()
    limits: Limits = Limits()
    lanes: tuple[LanePolicy, LanePolicy, LanePolicy] = DEFAULT_LANES
    liveness: LivenessConfig = LivenessConfig()
    quarantine_max: int = 1000
    rotation_grace_s: float = 7 * 86400
    metrics: MetricsConfig = MetricsConfig()
    provision: ProvisionConfig = ProvisionConfig()
    log_level: str = "info"


class _Section:
    """Reads typed keys out of one TOML table and refuses the unknown ones."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, "must be a table")
        self.data = data
        self.path = path
        self.used: set[str] = set()

    def key(self, k: str) -> str:
        return "%s.%s" % (self.path, k) if self.path else k

    def _get(self, k: str) -> Any:
        self.used.add(k)
        return self.data.get(k)

    def get_int(self, k: str, default: int | None, lo: int, hi: int) -> int:
        v = self._get(k)
        if v is None:
            if default is None:
                raise ConfigError(self.key(k), "is required")
            return default
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ConfigError(self.key(k), "must be an integer in %d..%d, got %r" % (lo, hi, v))
        return v

    def get_float(self, k: str, default: float, lo: float, hi: float) -> float:
        v = self._get(k)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise ConfigError(self.key(k), "must be a number in %g..%g, got %r" % (lo, hi, v))
        return float(v)

    def get_str(self, k: str, default: str | None, choices: tuple[str, ...] = ()) -> str:
        v = self._get(k)
        if v is None:
            if default is None:
                raise ConfigError(self.key(k), "is required")
            return default
        if not isinstance(v, str):
            raise ConfigError(self.key(k), "must be a string, got %r" % (v,))
        if choices and v not in choices:
            raise ConfigError(self.key(k), "must be one of %s, got %r" % ("|".join(choices), v))
        return v

    def get_bool(self, k: str, default: bool) -> bool:
        v = self._get(k)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise ConfigError(self.key(k), "must be true or false, got %r" % (v,))
        return v

    def get_table(self, k: str) -> _Section:
        v = self._get(k)
        return _Section({} if v is None else v, self.key(k))

    def done(self) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            raise ConfigError(self.key(extra[0]), "unknown key")


def _tls(s: _Section) -> TlsConfig:
    t = TlsConfig(s.get_bool("enabled", False), s.get_str("ca_file", ""),
                  s.get_str("cert_file", ""), s.get_str("key_file", ""))
    if t.enabled and (t.cert_file == "") != (t.key_file == ""):
        raise ConfigError(s.key("key_file"), "cert_file and key_file go together")
    s.done()
    return t


def _broker(s: _Section, default: BrokerConfig) -> BrokerConfig:
    b = BrokerConfig(
        host=s.get_str("host", default.host),
        port=s.get_int("port", default.port, 1, 65535),
        client_id=s.get_str("client_id", default.client_id),
        username=s.get_str("username", ""),
        password=s.get_str("password", ""),
        keepalive_s=s.get_int("keepalive_s", default.keepalive_s, 5, 3600),
        connect_timeout_s=s.get_float("connect_timeout_s", default.connect_timeout_s, 0.1, 300),
        tls=_tls(s.get_table("tls")),
    )
    if not b.host:
        raise ConfigError(s.key("host"), "must not be empty")
    if not 1 <= len(b.client_id) <= 64:
        raise ConfigError(s.key("client_id"), "must be 1..64 characters")
    return b


def _subscriptions(s: _Section) -> tuple[str, ...]:
    v = s._get("subscriptions")
    if v is None:
        return LocalConfig.subscriptions
    if (not isinstance(v, list) or not v
            or not all(isinstance(t, str) and t.startswith("ft/v1/") for t in v)):
        raise ConfigError(s.key("subscriptions"),
                          "must be a non-empty list of topic filters under ft/v1/")
    return tuple(v)


def _lanes(s: _Section) -> tuple[LanePolicy, LanePolicy, LanePolicy]:
    out = []
    for i, name in enumerate(LANE_NAMES):
        t = s.get_table(name)
        d = DEFAULT_LANES[i]
        out.append(LanePolicy(quota_mb=t.get_float("quota_mb", d.quota_mb, 0.001, 1e7),
                              ttl_s=t.get_float("ttl_s", d.ttl_s, 0, 10 * 365 * 86400),
                              evictable=d.evictable))
        t.done()
    s.done()
    return (out[0], out[1], out[2])


def parse_config(data: dict[str, Any], base: Path | None = None) -> GatewayConfig:
    """Validate a parsed TOML document; relative paths are taken from ``base``."""
    top = _Section(data, "")
    g = top.get_table("gateway")
    gid = g.get_str("id", None)
    if not is_valid_device_id(gid):
        raise ConfigError("gateway.id", "must be 3..32 of A-Z a-z 0-9 _ - , got %r" % gid)
    base = base or Path.cwd()
    store = base / g.get_str("store_path", None)
    registry = base / g.get_str("registry_path", None)
    log_level = g.get_str("log_level", "info", ("debug", "info", "warning", "error"))
    qmax = g.get_int("quarantine_max", 1000, 0, 10_000_000)
    grace = g.get_float("rotation_grace_s", 7 * 86400.0, 0.0, 366 * 86400.0)
    g.done()

    ls = top.get_table("local")
    local = LocalConfig(broker=_broker(ls, BrokerConfig(port=1883)),
                        subscriptions=_subscriptions(ls))
    if ls.get_int("connections", 1, 1, 16) != 1:
        # A shared subscription hands one device's records to the connections in
        # turn; read back in socket-sized runs they arrive further out of order
        # than the 128-record replay window, which would refuse them as replayed.
        raise ConfigError("local.connections", "only 1 is supported: a shared subscription "
                          "reorders a device's records beyond the replay window")
    ls.done()

    us = top.get_table("upstream")
    d = UpstreamConfig()
    upstream = UpstreamConfig(
        broker=_broker(us, d.broker),
        batch_max_records=us.get_int("batch_max_records", d.batch_max_records, 1, 100_000),
        batch_max_bytes=us.get_int("batch_max_bytes", d.batch_max_bytes, 1024, 64 * 1024 * 1024),
        linger_ms=us.get_float("linger_ms", d.linger_ms, 0, 10_000),
        max_inflight=us.get_int("max_inflight", d.max_inflight, 1, 1000),
        backoff_initial_s=us.get_float("backoff_initial_s", d.backoff_initial_s, 0.01, 3600),
        backoff_max_s=us.get_float("backoff_max_s", d.backoff_max_s, 0.01, 3600),
    )
    if upstream.backoff_max_s < upstream.backoff_initial_s:
        raise ConfigError("upstream.backoff_max_s", "must be >= upstream.backoff_initial_s")
    us.done()

    ins = top.get_table("ingest")
    di = IngestConfig()
    ingest = IngestConfig(queue_max=ins.get_int("queue_max", di.queue_max, 1, 10_000_000),
                          batch_max=ins.get_int("batch_max", di.batch_max, 1, 100_000),
                          linger_ms=ins.get_float("linger_ms", di.linger_ms, 0, 10_000),
                          sync=ins.get_str("sync", "normal", ("normal", "full")))
    ins.done()

    lim = top.get_table("limits")
    dl = Limits()
    limits = Limits(max_payload=lim.get_int("max_payload", dl.max_payload, 30, 128),
                    max_topic=lim.get_int("max_topic", dl.max_topic, 16, 1024),
                    max_future_s=lim.get_int("max_future_s", dl.max_future_s, 0, 10 * 365 * 86400),
                    max_past_s=lim.get_int("max_past_s", dl.max_past_s, 0, 100 * 365 * 86400))
    lim.done()

    lanes = _lanes(top.get_table("lanes"))

    lv = top.get_table("liveness")
    dv = LivenessConfig()
    liveness = LivenessConfig(
        default_hb_interval_s=lv.get_float("default_hb_interval_s", dv.default_hb_interval_s,
                                       1, 86400),
        unknown_factor=lv.get_float("unknown_factor", dv.unknown_factor, 1, 100),
        offline_factor=lv.get_float("offline_factor", dv.offline_factor, 1, 1000),
        debounce_s=lv.get_float("debounce_s", dv.debounce_s, 0, 3600))
    if liveness.offline_factor <= liveness.unknown_factor:
        raise ConfigError("liveness.offline_factor", "must be greater than unknown_factor")
    lv.done()

    ms = top.get_table("metrics")
    metrics = MetricsConfig(host=ms.get_str("host", "127.0.0.1"),
                            port=ms.get_int("port", 0, 0, 65535))
    ms.done()

    ps = top.get_table("provision")
    dp = ProvisionConfig()
    provision = ProvisionConfig(
        broker_host=ps.get_str("broker_host", local.broker.host),
        broker_port=ps.get_int("broker_port", local.broker.port, 1, 65535),
        broker_tls=ps.get_bool("broker_tls", False),
        gps_period_s=ps.get_int("gps_period_s", dp.gps_period_s, 1, 86400),
        hb_interval_s=ps.get_int("hb_interval_s", dp.hb_interval_s, 1, 65535))
    ps.done()
    top.done()
    return GatewayConfig(gateway_id=gid, store_path=store, registry_path=registry, local=local,
                         upstream=upstream, ingest=ingest, limits=limits, lanes=lanes,
                         liveness=liveness, quarantine_max=qmax, rotation_grace_s=grace,
                         metrics=metrics,
                         provision=provision, log_level=log_level)


def load_config(path: str | Path) -> GatewayConfig:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(str(p), "cannot read: %s" % e.strerror)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(str(p), "not valid TOML: %s" % e)
    return parse_config(data, p.resolve().parent)
