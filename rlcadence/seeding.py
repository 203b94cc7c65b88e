"""Seeds derived from (run seed, step, purpose): identical across processes, resumes and machines."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from its parts (``repr`` of each, hashed)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1
