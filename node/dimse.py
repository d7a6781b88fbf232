"""Small helpers shared by the DIMSE services (receiver, Q/R SCP, retrieve)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydicom.multival import MultiValue
from pynetdicom import build_context
from pynetdicom.presentation import PresentationContext

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


def listed(value: Any) -> list[str] | None:
    """The values of a multi-valued element (MultiValue, list or tuple); None for one value."""
    if isinstance(value, list | tuple | MultiValue):
        return [str(v) for v in value]
    return None


def contexts_for(stored: Iterable[tuple[str, str]]) -> list[PresentationContext]:
    """Presentation contexts for sending objects given as (SOP Class UID, transfer syntax
    they are stored in): each class in its stored syntaxes, then explicit and implicit
    little endian as fallbacks. At most 128 (the association's limit)."""
    syntaxes: dict[str, set[str]] = {}
    for sop_class, syntax in stored:
        syntaxes.setdefault(sop_class, set()).add(syntax)
    contexts = []
    for sop, ts in sorted(syntaxes.items())[:128]:
        ordered = [*sorted(t for t in ts if t), EXPLICIT_LE, IMPLICIT_LE]
        contexts.append(build_context(sop, list(dict.fromkeys(ordered))))
    return contexts
