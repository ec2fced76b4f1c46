"""Downlink commands: sign with the device's current key, publish, await the ack.

(epoch, seq) come from the store's persisted per-device command counter
(the epoch is bumped at every gateway start), so a device's command replay
window never sees a number twice. The device answers on
``ft/v1/{device}/ack`` with an ack envelope (cmd_epoch, cmd_seq, result),
which is checked here against the registry's keys; the running gateway
verifies and forwards the same ack upstream like any uplink.
"""

from __future__ import annotations

import queue
import secrets
import time
from dataclasses import dataclass
from typing import Any

from gateway.config import GatewayConfig
from gateway.errors import CommandError
from gateway.ingest import make_client
from gateway.registry import Registry
from gateway.store import next_command_id
from protocol import message
from protocol.auth import Signer
from protocol.codec import CMD_ACTION_CODES, CMD_PARAM_CODES
from protocol.errors import ProtocolError
from protocol.topics import KIND_ACK, KIND_CMD, topic_for
from protocol.verify import DeviceKeys, verify


@dataclass(frozen=True)
class CommandResult:
    device: str
    action: str
    epoch: int
    seq: int
    result: str | None        # None: no ack before the timeout
    latency_s: float

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "action": self.action, "cmd_epoch": self.epoch,
                "cmd_seq": self.seq, "result": self.result,
                "latency_ms": round(self.latency_s * 1000, 1)}


def build_command(device: str, key: bytes, key_id: int, action: str, params: dict[str, int],
                  epoch: int, seq: int, now: int) -> bytes:
    if action not in CMD_ACTION_CODES:
        raise CommandError("unknown action %r (one of %s)" % (action, ", ".join(CMD_ACTION_CODES)))
    for p in params:
        if p not in CMD_PARAM_CODES:
            raise CommandError("unknown parameter %r" % p)
    try:
        return message.encode(Signer(device, key, key_id), KIND_CMD, epoch, seq, now,
                              {"action": action, "params": params})
    except (ProtocolError, ValueError) as e:
        raise CommandError(str(e))


UNCONFIRMED_S = 10 * 365 * 86400   # the old key's life while a rotation is unconfirmed


def send_command(cfg: GatewayConfig, device: str, action: str, params: dict[str, int],
                 timeout_s: float = 10.0, grace_s: float = 7 * 86400) -> CommandResult:
    """Sign, publish and await the ack of one command.

    ``rotate_key`` draws a new key, wraps it under the current one
    (``protocol.message.encode_rotate_key``) and rotates the registry before
    sending: the gateway accepts the new key id from then on. The old key
    stays valid *until the device confirms* (its ``ok`` ack), and for
    ``grace_s`` after that, so records in flight or in an offline device's
    outbox are never refused; without an ack the old key stays valid and the
    operator sees the rotation as unconfirmed.
    """
    registry = Registry(cfg.registry_path)
    dev = registry.get(device)
    if dev.revoked:
        raise CommandError("device %s is revoked" % device)
    epoch, seq = next_command_id(cfg.store_path, device)
    now = int(time.time())
    if action == "rotate_key":
        if params:
            raise CommandError("rotate_key takes no parameters")
        new_key = secrets.token_bytes(32)
        new_kid = (dev.current_key_id + 1) % 16
        payload = message.encode_rotate_key(Signer(device, dev.current_key, dev.current_key_id),
                                            epoch, seq, now, new_kid, new_key)
        old_kid = dev.current_key_id
        registry.rotate_key(device, UNCONFIRMED_S, key=new_key)
    else:
        payload = build_command(device, dev.current_key, dev.current_key_id, action, params,
                                epoch, seq, now)
    dev = registry.get(device)
    keys = DeviceKeys(dev.usable_keys(time.time()), dev.revoked)
    result, latency = publish_and_await_ack(cfg, device, topic_for(device, KIND_CMD), payload,
                                            epoch, seq, keys, timeout_s)
    if action == "rotate_key" and result == "ok":
        registry.expire_key(device, old_kid, time.time() + grace_s)
    return CommandResult(device, action, epoch, seq, result, latency)


def publish_and_await_ack(cfg: GatewayConfig, device: str, topic: str, payload: bytes,
                          epoch: int, seq: int, keys: DeviceKeys,
                          timeout_s: float) -> tuple[str | None, float]:
    """Publish a command (or bundle) at QoS 1 and wait for the device's ack of
    (epoch, seq); returns (result or None on timeout, seconds)."""
    acks: queue.Queue[str] = queue.Queue(16)
    subscribed = queue.Queue[int](1)
    b = cfg.local.broker

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        v = verify(msg.topic, msg.payload, lambda d: keys if d == device else None,
                   lambda d, lane: None, int(time.time()))
        if v.ok and v.kind == KIND_ACK:
            body = v.envelope.body
            if body["cmd_epoch"] == epoch and body["cmd_seq"] == seq:
                try:
                    acks.put_nowait(body["result"])
                except queue.Full:
                    pass

    client = make_client(b, "%s-cmd-%d-%d" % (b.client_id[:40], epoch, seq), clean_session=True)
    client.on_message = on_message
    client.on_subscribe = lambda c, u, mid, rc, p=None: subscribed.put_nowait(mid)
    try:
        client.connect(b.host, b.port, b.keepalive_s)
    except OSError as e:
        raise CommandError("local broker %s:%d: %s" % (b.host, b.port, e))
    client.loop_start()
    try:
        client.subscribe(topic_for(device, KIND_ACK), qos=1)
        try:
            subscribed.get(timeout=b.connect_timeout_s)
        except queue.Empty:
            raise CommandError("no SUBACK from the local broker")
        t0 = time.monotonic()
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(b.connect_timeout_s)
        if not info.is_published():
            raise CommandError("local broker did not acknowledge the command")
        try:
            result: str | None = acks.get(timeout=timeout_s)
        except queue.Empty:
            result = None
        return result, time.monotonic() - t0
    finally:
        client.disconnect()
        client.loop_stop()
