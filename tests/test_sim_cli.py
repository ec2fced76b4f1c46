"""``python -m simulators``: subcommands, their outputs and their argument errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from simulators.__main__ import main
from simulators.checker import ProducedLog, load_attacks
from tests.test_sim_checker import GPS3, KEYS, T0, batch, rec

ROOT = Path(__file__).resolve().parent.parent


def _write_capture(path: Path, *batches: tuple[str, bytes]) -> None:
    with open(path, "w") as fh:
        for topic, payload in batches:
            fh.write(json.dumps({"topic": topic, "arrived_at": T0 + 2,
                                 "payload": payload.decode()}) + "\n")


def test_cli_check_offline_writes_json_and_exits_1_on_loss(tmp_path: Path) -> None:
    plog = ProducedLog(tmp_path / "produced.jsonl")
    for p in GPS3:
        plog.record(*p, T0)
    plog.close()
    _write_capture(tmp_path / "cap.jsonl", batch("telemetry", rec(*GPS3[0]), rec(*GPS3[1])))
    rc = main(["check", "--produced", str(tmp_path / "produced.jsonl"), "--from-capture",
               str(tmp_path / "cap.jsonl"), "--json", str(tmp_path / "r.json")])
    assert rc == 1
    assert json.loads((tmp_path / "r.json").read_text())["lost"] == 1


def test_cli_check_offline_exits_0_when_all_arrived(tmp_path: Path) -> None:
    plog = ProducedLog(tmp_path / "produced.jsonl")
    plog.record(*GPS3[0], T0)
    plog.close()
    keys = {"devices": {"rec-0001": {"keys": {"0": KEYS["rec-0001"].hex()}, "revoked": False}}}
    (tmp_path / "keys.json").write_text(json.dumps(keys))
    _write_capture(tmp_path / "cap.jsonl", batch("telemetry", rec(*GPS3[0])))
    assert main(["check", "--produced", str(tmp_path / "produced.jsonl"), "--keys",
                 str(tmp_path / "keys.json"), "--from-capture", str(tmp_path / "cap.jsonl")]) == 0


def test_cli_check_needs_a_port_or_a_capture(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.jsonl").write_text("")
    assert main(["check", "--produced", str(tmp_path / "p.jsonl")]) == 2
    assert "--port is required" in capsys.readouterr().err


def test_cli_gnss_writes_nmea_to_stdout() -> None:
    out = subprocess.run([sys.executable, "-m", "simulators", "gnss", "--stdout", "--fast",
                          "--duration", "3", "--route", "vehicle", "--seed", "4",
                          "--no-garbage", "--start-unix", "1780000000"],
                         capture_output=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0
    assert out.stdout.startswith(b"$GNRMC,,V,") and out.stdout.count(b"$GNGGA") == 3
    assert b"3 epochs" in out.stderr


def test_cli_gnss_pty_prints_the_slave_path_first() -> None:
    p = subprocess.Popen([sys.executable, "-m", "simulators", "gnss", "--pty", "--duration",
                          "1", "--fast"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=ROOT)
    try:
        assert p.stdout is not None
        first = p.stdout.readline().decode().strip()
        assert first.startswith("/dev/pts/")
    finally:
        p.wait(30)
        if p.stdout:
            p.stdout.close()
        if p.stderr:
            p.stderr.close()


def test_cli_gnss_names_a_serial_port_it_cannot_open(capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    assert main(["gnss", "--serial", "/dev/does-not-exist", "--duration", "1"]) == 1
    assert "cannot open /dev/does-not-exist" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["gnss", "--stdout", "--route", "bike"], "invalid choice: 'bike'"),
    (["gnss", "--stdout", "--cold-start", "40-20"], "need 0 <= low <= high <= 3600"),
    (["gnss", "--stdout", "--duration", "0"], "duration must be >0"),
    (["gnss", "--stdout", "--time-of-day", "25:00"], "time of day out of range"),
    (["gnss"], "one of the arguments --serial --pty --stdout is required"),
    (["rogue", "--port", "70000", "--attacks-log", "x"], "port must be 1..65535, got 70000"),
    (["rogue", "--port", "1", "--attacks-log", "x", "--own-key", "ab"], "must be 32 bytes"),
    (["rogue", "--port", "1", "--attacks-log", "x", "--targets", "a+b"], "bad: 'a+b'"),
    (["rogue", "--port", "1", "--attacks-log", "x", "--only", "nuke"], "unknown attack kind"),
    (["rogue", "--port", "1", "--attacks-log", "x", "--flood", "-1"], "flood count must be"),
    (["check", "--port", "1", "--produced", "/no/such/file"], "no such file: /no/such/file"),
])
def test_cli_bad_arguments_are_named(argv: list[str], message: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_rogue_refuses_a_remote_broker(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    assert main(["rogue", "--host", "192.0.2.1", "--port", "1883", "--attacks-log",
                 str(tmp_path / "a.jsonl")]) == 2
    assert "only attacks loopback" in capsys.readouterr().err


def test_cli_rogue_needs_own_key_with_own_device(capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    assert main(["rogue", "--port", "1883", "--attacks-log", str(tmp_path / "a.jsonl"),
                 "--own-device", "rec-0666"]) == 2
    assert "go together" in capsys.readouterr().err


def test_cli_fleet_rejects_a_bad_fault_with_a_specific_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet", "--fault", "10:meteor_strike"]) == 2
    assert "unknown action 'meteor_strike'" in capsys.readouterr().err


def test_cli_fleet_rejects_an_empty_fleet(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet", "--recorders", "0", "--wristbands", "0"]) == 2
    assert "at least one device" in capsys.readouterr().err


@pytest.mark.broker
def test_cli_rogue_logs_its_attacks(broker: Any, tmp_path: Path) -> None:
    log = tmp_path / "attacks.jsonl"
    rc = main(["rogue", "--port", str(broker.port), "--attacks-log", str(log),
               "--client-id", "rogue-cli-%d" % time.monotonic_ns(), "--targets",
               "rec-0001,wb-0001", "--only", "forged,flood", "--flood", "10",
               "--own-device", "rec-0666", "--own-key", "ab" * 32])
    assert rc == 0
    kinds = [a.attack for a in load_attacks([log])]
    assert kinds.count("forged") == 4 and kinds.count("flood") == 10


@pytest.mark.broker
def test_cli_check_receives_what_was_queued_for_its_persistent_session(
        broker: Any, tmp_path: Path) -> None:
    import paho.mqtt.client as mqtt

    plog = ProducedLog(tmp_path / "produced.jsonl")
    plog.record(*GPS3[0], T0)
    plog.close()
    client_id = "ck-cli-%d" % time.monotonic_ns()
    # a checker session that exists but is not connected: the broker queues for it
    subscribed = threading.Event()
    ck = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                     clean_session=False)
    ck.on_connect = lambda cl, ud, fl, rc, pr=None: cl.subscribe("ft/up/v1/#", qos=1)
    ck.on_subscribe = lambda *a: subscribed.set()
    ck.connect("127.0.0.1", broker.port, 30)
    ck.loop_start()
    assert subscribed.wait(10)
    ck.disconnect()
    ck.loop_stop()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-cli")
    pub.connect("127.0.0.1", broker.port, 30)
    pub.loop_start()
    pub.publish(*batch("telemetry", rec(*GPS3[0])), qos=1).wait_for_publish(5)
    pub.disconnect()
    pub.loop_stop()

    report = tmp_path / "report.json"
    out = subprocess.run([sys.executable, "-m", "simulators", "check", "--port",
                          str(broker.port), "--produced", str(tmp_path / "produced.jsonl"),
                          "--client-id", client_id, "--idle", "0.5", "--duration", "20",
                          "--json", str(report)],
                         cwd=ROOT, env=dict(os.environ, COLUMNS="120"), capture_output=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    d = json.loads(report.read_text())
    assert d["lost"] == 0 and d["forwarded"] == 1 and d["ok"]
    assert b"PASS" in out.stdout
