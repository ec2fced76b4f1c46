"""Device configuration and key, read from flash and checked.

``config.json`` (written at provisioning, see firmware/README.md)::

    {"device_id": "rec-0001", "kind": "recorder", "key_id": 0,
     "broker": {"host": "gw.example", "port": 8883, "keepalive_s": 60,
                "tls": {"ca": "ca.der", "cert": null, "key": null,
                        "server_hostname": "gw.example"}},
     "params": {"gps_period_s": 60, ...}, "outbox": {"max_records": 8192, ...}}

``key.hex`` holds the device's 32-byte key as 64 hex digits (``key.bin``
as raw bytes is accepted too). Provisioned separately from the config so
the config can be replaced without touching the key.

Every problem raises ConfigError with a reason; the device then stays in
safe idle (firmware/app/device.py) instead of sending anything.
"""

import json

import binascii

from protocol.topics import is_valid_device_id

CONFIG_FILE = "config.json"
KEY_HEX_FILE = "key.hex"
KEY_BIN_FILE = "key.bin"
PARAMS_FILE = "params.json"    # overrides set by command, survive reboots
ROTATED_KEY_FILE = "key.rot"   # "<key id> <64 hex>": the key a rotate_key command installed

KINDS = ("recorder", "wristband")

# Sampling and reporting parameters: default, lowest, highest allowed.
PARAM_LIMITS = {
    "gps_period_s": (60, 1, 86400),
    "min_period_s": (5, 1, 3600),
    "min_distance_m": (100, 0, 100000),
    "min_heading_deg": (30, 0, 180),
    "stationary_period_s": (600, 1, 86400),
    "stationary_speed_cms": (100, 0, 10000),
    "hb_interval_s": (300, 10, 86400),
    "alarm_period_s": (15, 1, 3600),
    "low_battery_pct": (15, 0, 100),
    "low_storage_mib": (500, 0, 1 << 30),
}
# Outbox defaults (see outbox.py for what they cost in flash writes).
OUTBOX_LIMITS = {
    "max_records": (8192, 64, 1 << 20),
    "segment_records": (256, 8, 65536),
    "flush_records": (32, 1, 256),
    "flush_age_s": (120, 1, 3600),
    "cursor_save_s": (300, 1, 86400),
}
MQTT_LIMITS = {
    "port": (1883, 1, 65535),
    "keepalive_s": (60, 10, 3600),
    "max_inflight": (8, 1, 32),
    "io_timeout_s": (10, 1, 120),
    "backoff_min_ms": (1000, 10, 60000),
    "backoff_max_s": (60, 1, 3600),
}


class ConfigError(Exception):
    """``reason``: config_missing, config_malformed, config_invalid,
    key_missing, key_malformed."""

    def __init__(self, reason, detail=""):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self):
        return self.reason + (": " + self.detail if self.detail else "")


def _ints(src, limits, where):
    if src is None:
        src = {}
    if not isinstance(src, dict):
        raise ConfigError("config_invalid", where + " must be an object")
    out = {}
    for name in limits:
        default, lo, hi = limits[name]
        v = src.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ConfigError("config_invalid", "%s.%s=%r not in %d..%d" % (
                where, name, v, lo, hi))
        out[name] = v
    for name in src:
        if name not in limits:
            raise ConfigError("config_invalid", "unknown %s.%s" % (where, name))
    return out


def check_param(name, value):
    """True if ``value`` is allowed for sampling parameter ``name``."""
    lim = PARAM_LIMITS.get(name)
    return (lim is not None and isinstance(value, int)
            and lim[1] <= value <= lim[2])


class TlsSettings:
    def __init__(self, src):
        if not isinstance(src, dict):
            raise ConfigError("config_invalid", "broker.tls must be an object")
        self.ca = src.get("ca")
        if not isinstance(self.ca, str) or not self.ca:
            # verification of the server is not optional
            raise ConfigError("config_invalid", "broker.tls.ca is required")
        self.cert = src.get("cert")
        self.key = src.get("key")
        if (self.cert is None) != (self.key is None):
            raise ConfigError("config_invalid", "broker.tls cert and key go together")
        self.server_hostname = src.get("server_hostname")


class Config:
    def __init__(self, doc):
        if not isinstance(doc, dict):
            raise ConfigError("config_invalid", "top level must be an object")
        self.device_id = doc.get("device_id")
        if not is_valid_device_id(self.device_id):
            raise ConfigError("config_invalid", "device_id %r" % (self.device_id,))
        self.kind = doc.get("kind")
        if self.kind not in KINDS:
            raise ConfigError("config_invalid", "kind %r" % (self.kind,))
        self.key_id = doc.get("key_id", 0)
        if isinstance(self.key_id, bool) or not isinstance(self.key_id, int) \
                or not 0 <= self.key_id <= 15:
            raise ConfigError("config_invalid", "key_id")
        broker = doc.get("broker")
        if not isinstance(broker, dict):
            raise ConfigError("config_invalid", "broker missing")
        self.host = broker.get("host")
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError("config_invalid", "broker.host")
        mq = {}
        for k in MQTT_LIMITS:
            if k in broker:
                mq[k] = broker[k]
        self.mqtt = _ints(mq, MQTT_LIMITS, "broker")
        self.port = self.mqtt["port"]
        tls = broker.get("tls")
        self.tls = TlsSettings(tls) if tls is not None else None
        self.watchdog_s = doc.get("watchdog_s", 30)
        if isinstance(self.watchdog_s, bool) or not isinstance(self.watchdog_s, int) \
                or not 2 <= self.watchdog_s <= 600:
            raise ConfigError("config_invalid", "watchdog_s not in 2..600")
        self.params = _ints(doc.get("params"), PARAM_LIMITS, "params")
        self.outbox = _ints(doc.get("outbox"), OUTBOX_LIMITS, "outbox")
        if self.outbox["max_records"] < 2 * self.outbox["segment_records"]:
            raise ConfigError("config_invalid", "outbox needs at least 2 segments")


def load_config(store):
    raw = store.read(CONFIG_FILE, 8192)
    if raw is None:
        raise ConfigError("config_missing", CONFIG_FILE)
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeError) as e:
        raise ConfigError("config_malformed", str(e)[:60])
    cfg = Config(doc)
    overrides = store.read(PARAMS_FILE, 2048)
    if overrides:
        try:
            saved = json.loads(overrides)
            for name in saved:
                if check_param(name, saved[name]):
                    cfg.params[name] = saved[name]
        except (ValueError, TypeError):
            pass  # a bad override file falls back to the provisioned values
    return cfg


def load_key(store):
    raw = store.read(KEY_HEX_FILE, 256)
    if raw is not None:
        text = raw.strip()
        if len(text) != 64:
            raise ConfigError("key_malformed", "key.hex must hold 64 hex digits")
        try:
            return binascii.unhexlify(text)
        except ValueError:
            raise ConfigError("key_malformed", "key.hex is not hex")
    raw = store.read(KEY_BIN_FILE, 256)
    if raw is None:
        raise ConfigError("key_missing", "key.hex")
    if len(raw) != 32:
        raise ConfigError("key_malformed", "key.bin must hold 32 bytes")
    return raw


def load_signing_key(store, provisioned_key_id):
    """(key id, key) to sign with: the last rotated key, else the provisioned one."""
    raw = store.read(ROTATED_KEY_FILE, 256)
    if raw is None:
        return provisioned_key_id, load_key(store)
    parts = raw.split()
    try:
        kid = int(parts[0])
        key = binascii.unhexlify(parts[1])
    except (IndexError, ValueError):
        raise ConfigError("key_malformed", "key.rot must hold '<key id> <64 hex>'")
    if len(parts) != 2 or len(key) != 32 or not 0 <= kid <= 15:
        raise ConfigError("key_malformed", "key.rot must hold '<key id> <64 hex>'")
    return kid, key


def save_rotated_key(store, key_id, key):
    """Atomic: after a power cut the device signs with the old key or the new, never a mix."""
    store.write_atomic(ROTATED_KEY_FILE,
                       ("%d %s" % (key_id, binascii.hexlify(key).decode())).encode())


TLS_ROTATED_FILE = "tls.rot"   # "<cert file> <key file>": installed by a certificate bundle


def apply_rotated_tls(store, cfg):
    """Point the TLS settings at the last rotated certificate, if any."""
    raw = store.read(TLS_ROTATED_FILE, 256)
    if raw is None or cfg.tls is None:
        return
    parts = raw.decode().split()
    if len(parts) != 2 or not store.exists(parts[0]) or not store.exists(parts[1]):
        raise ConfigError("config_invalid", "tls.rot must name two existing files")
    cfg.tls.cert, cfg.tls.key = parts[0], parts[1]


def save_rotated_tls(store, cert_name, cert, key_name, key):
    """Both files first, then the pointer (atomic): a power cut leaves the old
    pair or the new pair in use, never a mix."""
    store.write_atomic(cert_name, cert)
    store.write_atomic(key_name, key)
    store.write_atomic(TLS_ROTATED_FILE, ("%s %s" % (cert_name, key_name)).encode())


def save_params(store, params):
    store.write_atomic(PARAMS_FILE, json.dumps(params).encode())
