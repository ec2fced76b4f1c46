"""A network link over the host's sockets: MicroPython unix port and CPython.

The TCP connect is non-blocking (``ready()`` polls it). DNS
(``getaddrinfo``) and the TLS handshake cannot be made non-blocking on
MicroPython: they run with the socket timeout set to ``timeout_ms``, so
they are bounded, and the socket is non-blocking afterwards. TLS always
verifies the server certificate against the configured CA (CERT_REQUIRED);
a client certificate and key are loaded when configured (mutual TLS for
the broker-security issue).
"""

import select
import socket

try:
    import errno
    _EAGAIN = (errno.EAGAIN, errno.EINPROGRESS, getattr(errno, "EWOULDBLOCK", errno.EAGAIN))
except ImportError:  # pragma: no cover
    _EAGAIN = (11, 115)

try:
    import ssl
except ImportError:  # pragma: no cover - a build without TLS
    ssl = None

_CPYTHON = hasattr(socket.socket, "recv_into")
# CPython's non-blocking TLS says "try again" with its own exceptions
_TLS_AGAIN = tuple(getattr(ssl, n) for n in ("SSLWantReadError", "SSLWantWriteError")
                   if ssl is not None and hasattr(ssl, n))


def _again(e):
    return e.args[0] in _EAGAIN or (_TLS_AGAIN and isinstance(e, _TLS_AGAIN))


def _read_file(path):
    with open(path, "rb") as f:
        return f.read()


def _pem_copies(cert_der_path, key_der_path):
    """CPython's ssl loads a client certificate only from PEM files (a
    simulated device given the DER files MicroPython uses, e.g. after a
    certificate rotation): write PEM copies beside them."""
    import base64

    def pem(der, label):
        b64 = base64.encodebytes(der).decode().replace("\n", "")
        lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
        return ("-----BEGIN %s-----\n%s\n-----END %s-----\n"
                % (label, "\n".join(lines), label)).encode()

    out = []
    for src, label in ((cert_der_path, "CERTIFICATE"), (key_der_path, "EC PRIVATE KEY")):
        dst = src + ".pem"
        with open(dst, "wb") as f:
            f.write(pem(_read_file(src), label))
        out.append(dst)
    return out[0], out[1]


def make_tls_context(tls, base_dir=""):
    """An SSLContext that requires and verifies the server certificate."""
    if ssl is None:
        raise OSError("no TLS in this build")
    def path(p):
        return p if p.startswith("/") or not base_dir else base_dir + "/" + p
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    if _CPYTHON:
        ca = path(tls.ca)
        if ca.endswith(".der"):
            ctx.load_verify_locations(cadata=_read_file(ca))
        else:
            ctx.load_verify_locations(cafile=ca)
        if tls.cert:
            cert, key = path(tls.cert), path(tls.key)
            if cert.endswith(".der"):
                cert, key = _pem_copies(cert, key)
            ctx.load_cert_chain(cert, key)
    else:
        ctx.load_verify_locations(cadata=_read_file(path(tls.ca)))
        if tls.cert:
            ctx.load_cert_chain(_read_file(path(tls.cert)), _read_file(path(tls.key)))
    return ctx


class SocketTransport:
    def __init__(self, host, port, tls, timeout_ms, base_dir=""):
        self.host = host
        self.tls = tls
        self.timeout_s = timeout_ms / 1000
        self.base_dir = base_dir
        self._ready = False
        addr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        try:
            self.sock.connect(addr)
        except OSError as e:
            if e.args[0] not in _EAGAIN:
                self.sock.close()
                raise
        self._poll = select.poll()
        self._poll.register(self.sock, select.POLLOUT)

    @property
    def established(self):
        return self._ready

    def ready(self):
        if self._ready:
            return True
        ev = self._poll.poll(0)
        if not ev:
            return False
        flags = ev[0][1]
        if flags & (select.POLLERR | select.POLLHUP):
            raise OSError(111, "connect refused")
        self._poll.unregister(self.sock)
        if self.tls is not None:
            self._handshake()
        self._ready = True
        return True

    def _handshake(self):
        ctx = make_tls_context(self.tls, self.base_dir)
        self.sock.settimeout(self.timeout_s)      # bounded, see module doc
        name = self.tls.server_hostname or self.host
        try:
            self.sock = ctx.wrap_socket(self.sock, server_hostname=name)
        except (OSError, ValueError) as e:
            # MicroPython's mbedtls reports a failed verification as ValueError
            self.sock.close()
            raise OSError(13, "tls: %s" % (e,))
        self.sock.setblocking(False)

    def write(self, mv):
        try:
            n = self.sock.send(mv)
        except OSError as e:
            if _again(e):
                return 0
            raise
        return n or 0

    def readinto(self, mv):
        try:
            if _CPYTHON:
                n = self.sock.recv_into(mv)
            else:
                n = self.sock.readinto(mv)
        except OSError as e:
            if _again(e):
                return 0
            raise
        if n is None:
            return 0          # MicroPython: would block
        if n == 0:
            raise OSError(104, "closed by peer")
        return n

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class TcpLink:
    """``link down`` closes the open transport and refuses new ones."""

    def __init__(self, base_dir=""):
        self.is_up = True
        self.signal = -70
        self.base_dir = base_dir
        self.transport = None

    def up(self):
        return self.is_up

    def set_up(self, up):
        self.is_up = up
        if not up and self.transport is not None:
            self.transport.close()

    def signal_dbm(self):
        return self.signal if self.is_up else -128

    def open(self, host, port, tls, timeout_ms):
        if not self.is_up:
            raise OSError(101, "link down")
        self.transport = SocketTransport(host, port, tls, timeout_ms, self.base_dir)
        return self.transport
