"""The gateway's one exception tree; every error carries a machine-readable reason.

Protocol rejections stay ``protocol.errors.ProtocolError`` (their reasons are
counted as they are); everything the gateway itself refuses is a
``GatewayError`` with a reason from the list below.
"""

from __future__ import annotations

# Gateway-level rejection reasons, counted beside protocol.errors.REASONS.
PAYLOAD_TOO_LARGE = "too_large"
TOPIC_INVALID = "topic_invalid"

# Drop reasons (records accepted earlier and dropped later; never alarms).
EVICTED_QUOTA = "evicted_quota"
EXPIRED_TTL = "expired_ttl"


class GatewayError(Exception):
    """Base of every gateway error; ``reason`` is machine-readable."""

    reason = "gateway_error"

    def __init__(self, detail: str = "", reason: str | None = None) -> None:
        super().__init__(detail)
        if reason is not None:
            self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return "%s: %s" % (self.reason, self.detail) if self.detail else self.reason


class ConfigError(GatewayError):
    """A config key is missing or invalid; the message names the key."""

    reason = "config_invalid"

    def __init__(self, key: str, problem: str) -> None:
        super().__init__("%s: %s" % (key, problem))
        self.key = key
        self.problem = problem

    def __str__(self) -> str:
        return "%s: %s" % (self.key, self.problem)


class RegistryError(GatewayError):
    """The device registry refused an operation (unknown device, duplicate...)."""

    reason = "registry"


class StoreError(GatewayError):
    """The SQLite store is unusable (schema, disk, lock)."""

    reason = "store"


class UpstreamError(GatewayError):
    """The upstream broker refused or dropped the connection."""

    reason = "upstream"


class CommandError(GatewayError):
    """A downlink command could not be sent or was not acknowledged."""

    reason = "command"
