"""What the DIMSE services share: status codes, transfer syntaxes, presentation contexts."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import build_context, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import Status


class Dimse:
    """DIMSE status codes (PS3.4 annexes B and C, PS3.7 C); pynetdicom's `Status` names
    the general ones, the service-specific ones are named here once."""

    SUCCESS = int(Status.SUCCESS)
    PENDING = int(Status.PENDING)  # C-FIND/C-MOVE/C-GET: a match or a sub-operation
    PENDING_WARNING = 0xFF01  # C-FIND pending, optional keys not supported
    CANCEL = int(Status.CANCEL)
    NOT_AUTHORIZED = 0x0124  # PS3.7 C.5: refused, not authorized (access scope)
    DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.7 C.5: failure, duplicate SOP instance
    MOVE_DESTINATION_UNKNOWN = int(Status.MOVE_DESTINATION_UNKNOWN)
    OUT_OF_RESOURCES = 0xA700  # C-STORE: refused, out of resources
    IDENTIFIER_MISMATCH = 0xA900  # C-FIND/C-MOVE/C-GET: identifier does not match SOP class
    CANNOT_UNDERSTAND = 0xC000  # C-STORE: error, cannot understand
    UNABLE_TO_PROCESS = 0xC000  # C-FIND/C-MOVE/C-GET: unable to process
    SUBOPERATIONS_WARNING = 0xB000  # C-MOVE/C-GET: some sub-operations failed
    COERCED = 0xB000  # C-STORE warning: coercion of data elements
    ELEMENTS_DISCARDED = 0xB006  # C-STORE warning
    DATASET_MISMATCH = 0xB007  # C-STORE warning: dataset does not match SOP class


def _no_delay(event: evt.Event) -> None:
    """Nagle's algorithm off, as DCMTK has it: pynetdicom writes each PDU with its own
    send, and the short last fragment of an object would otherwise wait for the peer's
    delayed ACK (up to 40 ms on Linux) - per object, on every association."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # closed already: the association fails anyway
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


NO_DELAY = (evt.EVT_CONN_OPEN, _no_delay)  # on every association the node opens or accepts


def stored(status: int) -> bool:
    """A C-STORE status that means the object was stored (Success or a Warning)."""
    return status == Dimse.SUCCESS or status in (
        Dimse.COERCED,
        Dimse.ELEMENTS_DISCARDED,
        Dimse.DATASET_MISMATCH,
    )


# MR images: syntaxes the pipeline can decode (pylibjpeg: JPEG, JPEG-LS, JPEG 2000, RLE);
# big endian is retired but still sent by old devices.
MR_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]

RESULT_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]  # as written, then implicit


@dataclass(frozen=True)
class Peer:
    ae_title: str
    address: str


def peer_of(assoc: Any) -> Peer:
    return Peer(str(assoc.requestor.ae_title).strip(), str(assoc.requestor.address))


def contexts_for(stored_as: Iterable[tuple[str, str]]) -> list[PresentationContext]:
    """Presentation contexts for sending objects given as (SOP Class UID, transfer syntax
    they are stored in): each class in its stored syntaxes, then explicit and implicit
    little endian as fallbacks. At most 128 (the association's limit)."""
    syntaxes: dict[str, set[str]] = {}
    for sop_class, syntax in stored_as:
        syntaxes.setdefault(sop_class, set()).add(syntax)
    contexts = []
    for sop, ts in sorted(syntaxes.items())[:128]:
        ordered = [*sorted(t for t in ts if t), *RESULT_SYNTAXES]
        contexts.append(build_context(sop, list(dict.fromkeys(ordered))))
    return contexts
