"""Lane rules, pure: quota eviction and time-to-live per lane.

Lanes in priority order: alarm (0) > status (1) > telemetry (2). When a lane
is over its quota, an evictable lane (status, telemetry) frees its oldest
records; the alarm lane is never evicted: it raises an alert instead and
keeps accepting (alarms are never the thing that is dropped). Records older
than a lane's TTL expire, except where the TTL is 0 (alarms by default).
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.config import LanePolicy


def bytes_to_free(used: int, policy: LanePolicy) -> int:
    """How many bytes of the oldest records an over-quota lane must drop (0: none)."""
    if not policy.evictable or used <= policy.quota_bytes:
        return 0
    return used - policy.quota_bytes


def over_quota_alert(used: int, policy: LanePolicy) -> bool:
    """True for a non-evictable lane (alarms) over its quota: alert, keep everything."""
    return not policy.evictable and used > policy.quota_bytes


def pick_oldest(rows: Iterable[tuple[int, int]], need: int) -> tuple[list[int], int]:
    """From (id, size) rows oldest first, the ids to drop to free ``need`` bytes."""
    ids = []
    freed = 0
    for rid, size in rows:
        if freed >= need:
            break
        ids.append(rid)
        freed += size
    return ids, freed


def ttl_cutoff(now: float, policy: LanePolicy) -> float | None:
    """Records received before this time expire; None when the lane never expires."""
    if policy.ttl_s <= 0:
        return None
    return now - policy.ttl_s
