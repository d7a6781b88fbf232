"""The one place UIDs are made.

No organisation root is registered for lge-node, so UIDs use pydicom's root
(``1.2.826.0.1.3680043.8.498.``) with either fresh randomness or a deterministic hash of
the given parts (phantoms are reproducible per seed, including their UIDs).
"""

from __future__ import annotations

from pydicom.uid import PYDICOM_ROOT_UID, UID, generate_uid

UID_ROOT = PYDICOM_ROOT_UID


def new_uid() -> UID:
    """A fresh, random UID."""
    return generate_uid(prefix=UID_ROOT)


def derived_uid(*parts: object) -> UID:
    """A UID that is a pure function of ``parts`` (same parts, same UID)."""
    return generate_uid(prefix=UID_ROOT, entropy_srcs=["lge-node", *map(str, parts)])
