"""TLS to the broker: the server certificate is verified, on CPython and on
the MicroPython unix port; a wrong CA is refused."""

import datetime
import ipaddress
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from firmware.app.factory import make_device
from firmware.boards.sim import SimBoard, SimClock
from firmware.boards.tcplink import TcpLink
from firmware.devtools import UnixDevice, provision
from simulators.mosquitto import Mosquitto

pytestmark = pytest.mark.broker


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_server(ca_key, ca_cert):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("localhost"))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    ca_key, ca = make_ca("fieldtrace test CA")
    srv_key, srv = make_server(ca_key, ca)
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "ca.der").write_bytes(ca.public_bytes(serialization.Encoding.DER))
    (d / "srv.pem").write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    (d / "srv.key").write_bytes(srv_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    _, other = make_ca("someone else")
    (d / "other.pem").write_bytes(other.public_bytes(serialization.Encoding.PEM))
    (d / "other.der").write_bytes(other.public_bytes(serialization.Encoding.DER))
    b = Mosquitto(d, name="tls", extra="cafile %s\ncertfile %s\nkeyfile %s" % (
        d / "ca.pem", d / "srv.pem", d / "srv.key"))
    b.start()
    yield b, d
    b.stop()


def run_sim(flash, seconds=8):
    board = SimBoard(str(flash), clock=SimClock(unix_s=int(time.time())), link=TcpLink(str(flash)))
    dev = make_device(board, 0)
    end = time.monotonic() + seconds
    while time.monotonic() < end and not dev.mqtt.connected:
        board.clock.advance(50)
        dev.poll(board.clock.ms)
        time.sleep(0.01)
    return dev, board


@pytest.mark.parametrize("ca,ok", [("ca.pem", True), ("other.pem", False)])
def test_cpython_device_verifies_the_broker_certificate(tmp_path, tls_broker, ca, ok):
    broker, d = tls_broker
    (tmp_path / ca).write_bytes((d / ca).read_bytes())
    provision(tmp_path, "tls-dev-1", port=broker.port, host="localhost",
              broker_extra={"tls": {"ca": ca}, "backoff_max_s": 1})
    dev, board = run_sim(tmp_path, 8 if ok else 3)
    assert dev.mqtt.connected == ok, board.logs[-3:]
    if not ok:
        assert any(ln.startswith("W disconnected") and "tls" in ln for ln in board.logs), \
            board.logs


@pytest.mark.micropython
@pytest.mark.parametrize("ca,ok", [("ca.der", True), ("other.der", False)])
def test_micropython_device_verifies_the_broker_certificate(tmp_path, tls_broker, ca, ok):
    broker, d = tls_broker
    (tmp_path / ca).write_bytes((d / ca).read_bytes())
    provision(tmp_path, "tls-dev-2", port=broker.port, host="localhost",
              broker_extra={"tls": {"ca": ca}, "backoff_max_s": 1})
    with UnixDevice(tmp_path) as dev:
        if ok:
            dev.wait_line("I connected", 15)
        else:
            line = dev.wait_line("W disconnected", 15)
            assert "tls" in line, line            # refused at the handshake, not a timeout
            assert not any("I connected" in ln for ln in dev.lines)
