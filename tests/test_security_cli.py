"""`python -m gateway pki …`, `broker-config` and `devices provision --pki`:
the operator's side of mutual TLS, and revocation that takes effect at once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gateway.cli import main as cli_main
from tests.test_security_broker import GW, Peer, sub

pytestmark = pytest.mark.broker


def test_pki_init_issue_list_and_crl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "pki")
    assert cli_main(["pki", "--dir", d, "init", "--gateway-id", "gw-1"]) == 0
    assert cli_main(["pki", "--dir", d, "issue", "rec-0001"]) == 0
    assert cli_main(["pki", "--dir", d, "revoke", "rec-0001"]) == 0
    assert cli_main(["pki", "--dir", d, "crl"]) == 0
    capsys.readouterr()
    assert cli_main(["pki", "--dir", d, "list"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(r["cn"], r["role"], r["revoked_at"] is not None) for r in rows} == {
        ("broker", "broker", False), ("gw-1", "gateway", False), ("rec-0001", "device", True)}


def test_pki_refuses_an_id_with_a_wildcard(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "pki")
    assert cli_main(["pki", "--dir", d, "init"]) == 0
    assert cli_main(["pki", "--dir", d, "issue", "rec+1"]) == 2
    assert "not a valid id" in capsys.readouterr().err


def test_pki_without_init_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["pki", "--dir", str(tmp_path), "issue", "rec-0001"]) == 2
    assert "pki init" in capsys.readouterr().err


def test_broker_config_writes_tls_only_config_and_acl(tmp_path: Path) -> None:
    d = str(tmp_path / "pki")
    assert cli_main(["pki", "--dir", d, "init", "--gateway-id", "gw-1"]) == 0
    out = tmp_path / "broker"
    assert cli_main(["broker-config", "--pki", d, "--out", str(out), "--gateway-id", "gw-1"]) == 0
    conf = (out / "mosquitto.conf").read_text()
    assert "\nlistener 8883 0.0.0.0\n" in conf and conf.count("\nlistener ") == 1
    assert "require_certificate true" in conf and "use_identity_as_username true" in conf
    assert "crlfile" in conf
    acl = (out / "acl").read_text()
    assert "pattern write ft/v1/%u/gps" in acl and "user gw-1\ntopic read ft/v1/#" in acl


def test_provision_with_pki_writes_certificates_the_firmware_loads(
        tmp_path: Path) -> None:
    from tests.test_gateway_e2e import Site
    site = Site(tmp_path / "gw")
    try:
        cfg = ["--config", str(site.cfg_path)]
        pki = str(tmp_path / "pki")
        assert cli_main(["pki", "--dir", pki, "init"]) == 0
        assert cli_main(["devices", "add", "rec-0009", "--kind", "recorder", *cfg]) == 0
        out = tmp_path / "flash"
        assert cli_main(["devices", "provision", "rec-0009", "--out", str(out), "--pki", pki,
                         *cfg]) == 0
        from firmware.app.config import load_config
        from firmware.app.store import FlashStore
        conf = load_config(FlashStore(str(out)))
        assert conf.tls is not None and conf.tls.cert == "cert.der"
        assert (out / "cert.der").read_bytes()[:1] == b"\x30"      # DER SEQUENCE
    finally:
        site.close()


def test_revocation_takes_effect_at_once_on_an_open_connection(tmp_path: Path) -> None:
    from tests.test_security_broker import Site as SecureSite
    s = SecureSite(tmp_path)
    s.broker.start()
    try:
        gw = Peer(s, GW)
        assert gw.connect(s.port)
        sub(gw, "ft/v1/#")
        a = Peer(s, "rec-a")
        assert a.connect(s.port)
        a.c.publish("ft/v1/rec-a/gps", b"before", qos=1).wait_for_publish(5)
        gw.wait_for("ft/v1/rec-a/gps", b"before")
        assert cli_main(["pki", "--dir", str(s.pki.dir), "revoke", "rec-a",
                         "--broker-dir", str(tmp_path / "broker")]) == 0
        time.sleep(0.5)        # mosquitto handles SIGHUP in its main loop
        a.c.publish("ft/v1/rec-a/gps", b"after", qos=1).wait_for_publish(5)
        b = Peer(s, "rec-b")
        assert b.connect(s.port)
        b.c.publish("ft/v1/rec-b/gps", b"marker", qos=1).wait_for_publish(5)
        gw.wait_for("ft/v1/rec-b/gps", b"marker")
        assert b"after" not in [p for _t, p in gw.got]
        assert not Peer(s, "rec-a").connect(s.port)          # the CRL refuses it too
    finally:
        s.broker.stop()
