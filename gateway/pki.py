"""The edge site's private CA: one certificate per device, one for the gateway,
one for the broker, and a certificate revocation list.

Layout of a PKI directory (everything an operator needs to back up):

    ca.key, ca.crt            the site CA (EC P-256), key mode 0600
    broker.key, broker.crt    mosquitto's server certificate (SAN: names and IPs)
    issued/<cn>.key|.crt|.der the identities; .der (cert) and .key.der are what
                              MicroPython's ssl module loads
    crl.pem                   revoked serials, re-signed on every revocation
    index.json                serial, CN, role, expiry and revocation of everything issued

The common name of a device certificate is its device id — which is also its
MQTT client id and its topic level — so an id that is not a valid device id
(``+``, ``#``, ``/``…) never gets a certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import GatewayError
from protocol.topics import is_valid_device_id

DEVICE_DAYS = 3 * 365
CA_DAYS = 10 * 365
ROLES = ("device", "gateway", "broker", "client")


class PkiError(GatewayError):
    reason = "pki_error"


@dataclass(frozen=True)
class Issued:
    cn: str
    role: str
    serial: int
    not_after: str
    revoked_at: str | None = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Pki:
    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)

    # ---- paths ----
    @property
    def ca_cert_path(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def crl_path(self) -> Path:
        return self.dir / "crl.pem"

    def cert_path(self, cn: str) -> Path:
        return self.dir / "issued" / (cn + ".crt")

    def key_path(self, cn: str) -> Path:
        return self.dir / "issued" / (cn + ".key")

    # ---- CA ----
    def init(self, site: str = "fieldtrace edge site", gateway_ids: tuple[str, ...] = (),
             broker_hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> None:
        """Create the CA, the broker's certificate and one per gateway id."""
        self._init_ca(site)
        self.issue("broker", role="broker", hosts=broker_hosts)
        for gid in gateway_ids:
            self.issue(gid, role="gateway")

    def _init_ca(self, site: str) -> None:
        if self.ca_cert_path.exists():
            raise PkiError("%s already holds a CA; refusing to overwrite it" % self.dir)
        (self.dir / "issued").mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, site + " CA")])
        now = _now()
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                             False, False), critical=True)
                .sign(key, hashes.SHA256()))
        _write_private(self.dir / "ca.key", _key_pem(key))
        _write_public(self.ca_cert_path, cert.public_bytes(serialization.Encoding.PEM))
        self._save_index([])
        self.write_crl()

    def _ca(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        try:
            key = serialization.load_pem_private_key((self.dir / "ca.key").read_bytes(), None)
            cert = x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())
        except FileNotFoundError:
            raise PkiError("no CA in %s: run `pki init` first" % self.dir) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError("ca.key is not an EC key")
        return key, cert

    # ---- index ----
    def _load_index(self) -> list[Issued]:
        try:
            rows = json.loads((self.dir / "index.json").read_text())
        except FileNotFoundError:
            raise PkiError("no CA in %s: run `pki init` first" % self.dir) from None
        except ValueError as e:
            raise PkiError("index.json is corrupt: %s" % e) from None
        return [Issued(**r) for r in rows]

    def _save_index(self, rows: list[Issued]) -> None:
        data = json.dumps([r.__dict__ for r in rows], indent=1).encode()
        _write_public(self.dir / "index.json", data)

    def issued(self) -> list[Issued]:
        return self._load_index()

    # ---- issuing ----
    def issue(self, cn: str, role: str = "device", days: int = DEVICE_DAYS,
              hosts: tuple[str, ...] = (), not_before: dt.datetime | None = None) -> Issued:
        """Issue a key and certificate for ``cn``; ``hosts`` become SANs (broker)."""
        return self.issue_many([cn], role, days, hosts, not_before)[0]

    def issue_many(self, cns: list[str], role: str = "device", days: int = DEVICE_DAYS,
                   hosts: tuple[str, ...] = (), not_before: dt.datetime | None = None,
                   renewal: bool = False) -> list[Issued]:
        """Issue several identities with one index write (a fleet at provisioning).
        ``renewal``: a second valid certificate for the same id (certificate
        rotation; the old one is revoked once the device confirms)."""
        ca_key, ca_cert = self._ca()
        rows = self._load_index()
        valid = set() if renewal else {r.cn for r in rows if r.revoked_at is None}
        out = []
        for cn in cns:
            if cn in valid:
                raise PkiError("%s already has a valid certificate; revoke it first" % cn)
            out.append(self._issue_one(ca_key, ca_cert, cn, role, days, hosts, not_before))
            valid.add(cn)
        self._save_index(rows + out)
        return out

    def _issue_one(self, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                   cn: str, role: str, days: int, hosts: tuple[str, ...],
                   not_before: dt.datetime | None) -> Issued:
        if role not in ROLES:
            raise PkiError("role must be one of %s" % ", ".join(ROLES))
        if role != "broker" and not is_valid_device_id(cn):
            raise PkiError("%r is not a valid id (3-32 of A-Z a-z 0-9 _ -): no certificate"
                           % cn)
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or _now() - dt.timedelta(minutes=5)
        usage = (ExtendedKeyUsageOID.SERVER_AUTH if role == "broker"
                 else ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                   .issuer_name(ca_cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), False))
        if hosts:
            sans: list[x509.GeneralName] = []
            for h in hosts:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(h)))
                except ValueError:
                    sans.append(x509.DNSName(h))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), False)
        cert = builder.sign(ca_key, hashes.SHA256())
        base = self.dir / ("broker" if role == "broker" else "issued/" + cn)
        _write_private(base.with_suffix(".key"), _key_pem(key))
        _write_private(base.with_suffix(".key.der"), key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))
        _write_public(base.with_suffix(".crt"), cert.public_bytes(serialization.Encoding.PEM))
        _write_public(base.with_suffix(".der"), cert.public_bytes(serialization.Encoding.DER))
        return Issued(cn, role, cert.serial_number, cert.not_valid_after_utc.isoformat())

    def revoke(self, cn: str, serials: tuple[int, ...] = ()) -> Issued:
        """Revoke ``cn``'s valid certificates (only ``serials`` when given)."""
        rows = self._load_index()
        live = [r for r in rows if r.cn == cn and r.revoked_at is None
                and (not serials or r.serial in serials)]
        if not live:
            raise PkiError("%s has no valid certificate to revoke" % cn)
        when = _now().isoformat()
        rows = [Issued(r.cn, r.role, r.serial, r.not_after, when) if r in live else r
                for r in rows]
        self._save_index(rows)
        self.write_crl()
        return Issued(live[0].cn, live[0].role, live[0].serial, live[0].not_after, when)

    def write_crl(self, days: int = 30) -> Path:
        """Re-sign the CRL. mosquitto reads it at start and on SIGHUP."""
        ca_key, ca_cert = self._ca()
        now = _now()
        builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
                   .last_update(now - dt.timedelta(minutes=5))
                   .next_update(now + dt.timedelta(days=days)))
        for r in self._load_index():
            if r.revoked_at is not None:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder().serial_number(r.serial)
                    .revocation_date(dt.datetime.fromisoformat(r.revoked_at)).build())
        crl = builder.sign(ca_key, hashes.SHA256())
        _write_public(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))
        return self.crl_path

    def device_files(self, cn: str) -> dict[str, bytes]:
        """What a device needs on flash for mutual TLS: CA, certificate and key,
        as DER (``*.der``: what MicroPython's mbedTLS loads) and PEM (``*.pem``:
        what CPython's ssl loads, for simulated devices)."""
        issued = self.dir / "issued"
        try:
            ca_pem = self.ca_cert_path.read_bytes()
            return {
                "ca.der": x509.load_pem_x509_certificate(ca_pem)
                .public_bytes(serialization.Encoding.DER),
                "cert.der": (issued / (cn + ".der")).read_bytes(),
                "key.der": (issued / (cn + ".key.der")).read_bytes(),
                "ca.pem": ca_pem,
                "cert.pem": (issued / (cn + ".crt")).read_bytes(),
                "key.pem": (issued / (cn + ".key")).read_bytes(),
            }
        except FileNotFoundError:
            raise PkiError("%s has no certificate: run `pki issue %s`" % (cn, cn)) from None
