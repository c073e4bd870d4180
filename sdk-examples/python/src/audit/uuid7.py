"""UUIDv7 (RFC 9562, section 5.7): time-ordered ids that the client chooses, so retries are
idempotent. Python's `uuid` module has no `uuid7` before 3.14.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_last_counter = 0


def uuid7() -> uuid.UUID:
    """A new UUIDv7: 48 bits of Unix time in milliseconds, the version, 12 bits of a counter
    that keeps ids made in the same millisecond increasing (RFC 9562 method 1, "fixed bit-length
    dedicated counter", seeded randomly each millisecond), the variant and 62 random bits.

    Ids made by one process are strictly increasing, even if the clock steps back.
    """
    global _last_ms, _last_counter
    random = int.from_bytes(os.urandom(10), "big")
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms = now_ms
            # Leave room above the seed, so the counter rarely overflows within a millisecond.
            _last_counter = (random >> 62) & 0x7FF
        else:
            _last_counter += 1
            if _last_counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms += 1
                _last_counter = 0
        ms, counter = _last_ms, _last_counter
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76
    value |= counter << 64
    value |= 0b10 << 62
    value |= random & 0x3FFF_FFFF_FFFF_FFFF
    return uuid.UUID(int=value)


def uuid7_str() -> str:
    """`str(uuid7())`: the form `AuditEntry.id` and `request_id` take."""
    return str(uuid7())
