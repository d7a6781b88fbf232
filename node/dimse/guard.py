"""Transport guard: what a hostile or broken peer may cost the node, bounded below DIMSE.

pynetdicom reads a PDU by its declared length and waits on each ``recv`` for the network
timeout, so by itself a peer can (a) declare a 4 GiB PDU and stream it into memory, (b)
drip-feed an A-ASSOCIATE-RQ one byte per few seconds forever, (c) open hundreds of TCP
connections that never send a PDU, each counted as an association. The node wraps its
server (`ae.make_server` with a custom class, which pynetdicom provides for this):

- at accept: at most ``max_connections`` open connections, ``max_connections_per_address``
  from one address (a flood from one host does not lock out the others);
- per PDU: the declared length is checked against the limit *before* its body is read
  (an A-ASSOCIATE-RQ is small; P-DATA at most the PDU size we announce), and the whole
  PDU must arrive within a deadline that grows with its size (a stalled or drip-feeding
  peer is cut off even though each byte arrives within the network timeout);
- before the association is established, everything (the whole A-ASSOCIATE-RQ) must
  arrive within ``negotiation_timeout_s`` of the connection.

A violation closes that one connection with a recorded reason; the others carry on.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

ASSOCIATE_RQ = 0x01
MAX_ASSOCIATE_RQ_BYTES = 1 << 20  # 128 contexts x 64 syntaxes is ~ 500 kB
PDU_SLACK = 1024  # PDV item headers on top of the announced maximum


@dataclass(frozen=True)
class Limits:
    max_connections: int
    max_connections_per_address: int
    negotiation_timeout_s: float
    network_timeout_s: float
    max_pdu_bytes: int
    min_rate_bytes_s: float = 256 * 1024  # a PDU slower than this (after a grace) is dropped


class GuardedSocket(AssociationSocket):
    """An `AssociationSocket` that checks each PDU's length and arrival deadline."""

    limits: Limits
    on_violation: Callable[[str, str], None]

    def _setup(self, limits: Limits, on_violation: Callable[[str, str], None]) -> None:
        self.limits = limits
        self.on_violation = on_violation
        self.opened = time.monotonic()
        self._expect_header = True
        self._body_length = 0

    def recv(self, nr_bytes: int) -> bytearray:
        now = time.monotonic()
        established = bool(getattr(self.assoc, "is_established", False))
        if self._expect_header:
            # Waiting between PDUs is pynetdicom's idle timeout; before the association
            # exists, the negotiation deadline counts from the connection.
            deadline = None if established else self.opened + self.limits.negotiation_timeout_s
        else:
            budget = self.limits.network_timeout_s + nr_bytes / self.limits.min_rate_bytes_s
            deadline = now + budget
            if not established:
                deadline = min(deadline, self.opened + self.limits.negotiation_timeout_s)
        data = self._read(nr_bytes, deadline)
        if self._expect_header and len(data) == 6:
            pdu_type, _, length = struct.unpack(">BBL", bytes(data))
            limit = (
                MAX_ASSOCIATE_RQ_BYTES
                if pdu_type == ASSOCIATE_RQ
                else self.limits.max_pdu_bytes + PDU_SLACK
            )
            if length > limit:
                self._violation(
                    f"PDU type 0x{pdu_type:02X} declares {length} bytes, more than the "
                    f"{limit} accepted: connection closed before reading it"
                )
            self._expect_header = False
            self._body_length = length
        elif not self._expect_header:
            self._expect_header = True
        return data

    def _read(self, nr_bytes: int, deadline: float | None) -> bytearray:
        sock = self.socket
        assert sock is not None
        out = bytearray()
        while len(out) < nr_bytes:
            timeout = self.limits.network_timeout_s
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._violation(
                        f"{'association negotiation' if not self.assoc.is_established else 'PDU'}"
                        f" not complete within its deadline ({len(out)} of {nr_bytes} bytes)"
                    )
                timeout = min(timeout, remaining)
            sock.settimeout(max(timeout, 0.01))
            try:
                chunk = sock.recv(min(nr_bytes - len(out), 65536))
            except TimeoutError:
                self._violation(
                    f"peer stalled: nothing for {timeout:.0f} s ({len(out)} of {nr_bytes} bytes)"
                )
            if not chunk:
                break  # closed by the peer: pynetdicom handles a short read
            out.extend(chunk)
        sock.settimeout(self.limits.network_timeout_s)
        return out

    def _violation(self, reason: str) -> None:
        address = str(getattr(self.assoc.requestor, "address", "") or "")
        self.on_violation(address, reason)
        raise OSError(reason)


class GuardedRequestHandler(RequestHandler):
    server: GuardedServer

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        # The base class made an AssociationSocket (which already queued the "connection
        # open" event for this socket); turn it into a guarded one in place rather than
        # make a second.
        sock = assoc.dul.socket
        sock.__class__ = GuardedSocket
        sock._setup(self.server.limits, self.server.on_violation)
        return assoc


class GuardedServer(ThreadedAssociationServer):
    """`ThreadedAssociationServer` with connection caps and guarded sockets. Configure with
    `configure` right after `AE.make_server` creates it."""

    limits: Limits
    on_violation: Callable[[str, str], None]

    def configure(self, limits: Limits, on_violation: Callable[[str, str], None]) -> None:
        self.limits = limits
        self.on_violation = on_violation
        self.RequestHandlerClass = GuardedRequestHandler
        self._open: dict[str, list[socket.socket]] = {}
        self._open_lock = threading.Lock()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        address = str(client_address[0])
        with self._open_lock:
            # Count connections still open (a closed socket's fileno is -1); pruning here
            # cannot leak a slot even if some path forgets to report a close.
            for key in list(self._open):
                self._open[key] = [s for s in self._open[key] if s.fileno() != -1]
                if not self._open[key]:
                    del self._open[key]
            total = sum(len(v) for v in self._open.values())
            mine = len(self._open.get(address, []))
            if total >= self.limits.max_connections:
                reason = f"{total} connections open, dicom.max_connections reached"
            elif mine >= self.limits.max_connections_per_address:
                reason = (
                    f"{mine} connections open from {address}, "
                    "dicom.max_connections_per_address reached"
                )
            else:
                self._open.setdefault(address, []).append(request)
                return True
        self.on_violation(address, f"connection refused at accept: {reason}")
        return False

    def open_connections(self) -> int:
        with self._open_lock:
            return sum(1 for v in self._open.values() for s in v if s.fileno() != -1)
