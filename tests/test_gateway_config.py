"""Gateway config: the sample loads, and every error names the key and the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import load_config, parse_config
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def minimal() -> dict[str, Any]:
    return {"gateway": {"id": "gw-1", "store_path": "s.db", "registry_path": "r.json"}}


def with_key(dotted: str, value: Any) -> dict[str, Any]:
    doc = minimal()
    *tables, key = dotted.split(".")
    t = doc
    for name in tables:
        t = t.setdefault(name, {})
    t[key] = value
    return doc


def test_sample_config_loads() -> None:
    cfg = load_config(ROOT / "gateway" / "gateway.sample.toml")
    assert cfg.gateway_id == "gw-zhucheng-01"
    assert cfg.upstream.broker.tls.enabled
    assert not cfg.lanes[0].evictable and cfg.lanes[2].evictable


def test_minimal_config_takes_defaults_and_resolves_paths(tmp_path: Path) -> None:
    cfg = parse_config(minimal(), tmp_path)
    assert cfg.store_path == tmp_path / "s.db"
    assert cfg.local.subscriptions == ("ft/v1/+/+",)
    assert cfg.ingest.sync == "normal"


@pytest.mark.parametrize("dotted,value,problem", [
    ("upstream.port", "x", "integer"),
    ("upstream.port", 70000, "1..65535"),
    ("local.connections", 0, "1..16"),
    ("local.connections", 2, "only 1 is supported"),
    ("ingest.sync", "sometimes", "normal|full"),
    ("lanes.telemetry.quota_mb", -1, "number"),
    ("liveness.debounce_s", True, "number"),
    ("upstream.tls.enabled", "yes", "true or false"),
    ("local.subscriptions", ["#"], "under ft/v1/"),
    ("gateway.id", "bad id!", "3..32"),
    ("gateway.log_level", "loud", "debug|info"),
    ("upstream.colour", "blue", "unknown key"),
    ("metrics.port", 1.5, "integer"),
])
def test_invalid_value_error_names_key_and_problem(dotted: str, value: Any,
                                                    problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(with_key(dotted, value))
    assert e.value.key == dotted
    assert problem in str(e.value)
    assert str(e.value).startswith(dotted + ":")


def test_missing_required_key_is_named() -> None:
    doc = minimal()
    del doc["gateway"]["store_path"]
    with pytest.raises(ConfigError, match=r"^gateway\.store_path: is required"):
        parse_config(doc)


def test_offline_factor_must_exceed_unknown_factor() -> None:
    doc = with_key("liveness.offline_factor", 2.0)
    with pytest.raises(ConfigError, match="liveness.offline_factor"):
        parse_config(doc)


def test_unreadable_and_malformed_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway\nid=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


INT_KEYS = ["local.port", "upstream.port", "upstream.batch_max_records", "ingest.batch_max",
            "ingest.queue_max", "limits.max_payload", "metrics.port", "gateway.quarantine_max"]


@settings(max_examples=150, deadline=None)
@given(key=st.sampled_from(INT_KEYS),
       value=st.one_of(st.text(max_size=5), st.booleans(), st.floats(allow_nan=False),
                       st.integers(max_value=-1), st.integers(min_value=10**9),
                       st.lists(st.integers(), max_size=2)))
def test_property_bad_integer_is_refused_naming_its_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(with_key(key, value))
    assert e.value.key == key


@settings(max_examples=100, deadline=None)
@given(port=st.integers(1, 65535), batch=st.integers(1, 100_000),
       linger=st.floats(0, 10_000, allow_nan=False))
def test_property_valid_values_round_trip(port: int, batch: int, linger: float) -> None:
    doc = with_key("upstream.port", port)
    doc["ingest"] = {"batch_max": batch, "linger_ms": linger}
    cfg = parse_config(doc)
    assert (cfg.upstream.broker.port, cfg.ingest.batch_max, cfg.ingest.linger_ms) == (
        port, batch, linger)
