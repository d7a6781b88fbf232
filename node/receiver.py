"""The DICOM service: C-ECHO and C-STORE, access control, optional TLS.

Each C-STORE is checked (UIDs, truncation), written to disk as received (no re-encoding),
atomically under a hashed path, and journalled; only then does the peer get Success. The
indexer (`node.ingest`) indexes it moments later. Anything unreadable gets a failure
status and an event row, and the association (and the node) carry on.
"""

from __future__ import annotations

import io
import logging
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from node.config import Config
from node.dimse import listed
from node.index import Index, InstanceInfo, Received
from node.logs import event
from node.qr import QueryRetrieve
from node.selector import MR_CLASSES
from node.storage import InvalidUidError, Storage, check_uid

log = logging.getLogger("node.receiver")

# MR images: syntaxes the pipeline can decode (pylibjpeg: JPEG, JPEG-LS, JPEG 2000, RLE).
MR_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old devices)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
]

QR_CLASSES = [
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
]

# C-STORE failure statuses (PS3.4 B.2.3)
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
REFUSED_NOT_AUTHORISED = 0x0124


@dataclass(frozen=True)
class Peer:
    ae_title: str
    address: str


def peer_of(assoc: Any) -> Peer:
    return Peer(str(assoc.requestor.ae_title).strip(), str(assoc.requestor.address))


class Receiver:
    """Owns the pynetdicom AE; `start` returns once the port is listening."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        index: Index,
        submit: Callable[[Received], None],
    ) -> None:
        self.config = config
        self.storage = storage
        self.index = index
        self.submit = submit  # hands a stored instance to the indexer (node.ingest)
        self.qr = QueryRetrieve(config, index)
        self.ae = self._build_ae()
        self.server: ThreadedAssociationServer | None = None
        self.received = Counter[str]()  # per association: instances stored
        self._lock = threading.Lock()

    # -- set-up ------------------------------------------------------------------------

    def _build_ae(self) -> AE:
        cfg = self.config.dicom
        ae = AE(ae_title=cfg.ae_title)
        ae.maximum_associations = cfg.max_associations
        ae.network_timeout = cfg.network_timeout_s
        ae.acse_timeout = cfg.network_timeout_s
        ae.dimse_timeout = cfg.network_timeout_s
        ae.maximum_pdu_size = 0  # no limit: fewer, larger PDUs are faster to receive
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for cx in AllStoragePresentationContexts:
            uid = str(cx.abstract_syntax)
            syntaxes = MR_TRANSFER_SYNTAXES if uid in MR_CLASSES else ALL_TRANSFER_SYNTAXES
            # both roles: we store what peers send, and send what a C-GET asks for
            ae.add_supported_context(uid, syntaxes, scu_role=True, scp_role=True)
        for sop in QR_CLASSES:
            ae.add_supported_context(sop, ALL_TRANSFER_SYNTAXES[:4])
        return ae

    def ssl_context(self) -> ssl.SSLContext | None:
        tls = self.config.tls
        if not tls.enabled:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        assert tls.certificate and tls.private_key
        ctx.load_cert_chain(str(tls.certificate), str(tls.private_key))
        if tls.ca_certificates:
            ctx.load_verify_locations(str(tls.ca_certificates))
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_NONE
        return ctx

    def start(self) -> None:
        cfg = self.config.dicom
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self.qr.on_find),
            (evt.EVT_C_MOVE, self.qr.on_move),
            (evt.EVT_C_GET, self.qr.on_get),
        ]
        self.server = self.ae.start_server(
            (cfg.bind_address, cfg.port),
            block=False,
            ssl_context=self.ssl_context(),
            evt_handlers=handlers,
        )
        event(
            log, "listening", ae_title=cfg.ae_title, address=cfg.bind_address, port=cfg.port,
            tls=self.config.tls.enabled,
        )  # fmt: skip

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        event(log, "stopped")

    # -- associations ------------------------------------------------------------------

    def allowed(self, peer: Peer) -> str | None:
        """None if the peer may associate, else the reason it may not."""
        allowed = self.config.access.allowed_peers
        if not allowed:
            return None
        titles = [p for p in allowed if p.ae_title == peer.ae_title]
        if not titles:
            return f"calling AE title {peer.ae_title!r} is not in access.allowed_peers"
        if all(p.address is not None and p.address != peer.address for p in titles):
            return f"calling AE title {peer.ae_title!r} is not allowed from {peer.address}"
        return None

    def _on_requested(self, ev: Any) -> None:
        calling = str(ev.assoc.requestor.primitive.calling_ae_title).strip()
        peer = Peer(calling, str(ev.assoc.requestor.address))
        reason = self.allowed(peer)
        if reason is None:
            return
        event(
            log, "association_rejected", logging.WARNING, peer_ae=peer.ae_title,
            address=peer.address, reason=reason,
        )  # fmt: skip
        self.index.record_event(
            "association_rejected", reason, "WARNING", peer.ae_title, peer.address
        )
        # rejected-permanent, service-user, calling-AE-title-not-recognized
        ev.assoc.acse.send_reject(0x01, 0x01, 0x03)
        ev.assoc.is_rejected = True
        ev.assoc.kill()

    def _on_established(self, ev: Any) -> None:
        peer = peer_of(ev.assoc)
        event(log, "association_accepted", peer_ae=peer.ae_title, address=peer.address)

    def _finish(self, ev: Any, how: str) -> None:
        peer = peer_of(ev.assoc)
        with self._lock:
            stored = self.received.pop(str(id(ev.assoc)), 0)
        level = logging.INFO if how == "released" else logging.WARNING
        event(log, f"association_{how}", level, peer_ae=peer.ae_title, stored=stored)

    def _on_released(self, ev: Any) -> None:
        self._finish(ev, "released")

    def _on_aborted(self, ev: Any) -> None:
        self._finish(ev, "aborted")

    def _on_conn_close(self, ev: Any) -> None:
        assoc = ev.assoc
        if assoc.is_established or assoc.is_released or assoc.is_rejected:
            return
        # Closed before any association was agreed: garbage bytes, a port scanner, or a
        # peer that gave up. Recorded, because an operator debugging routing wants it.
        address = str(assoc.requestor.address or "")
        reason = "connection closed before a valid association (not DICOM, or aborted)"
        event(log, "connection_dropped", logging.WARNING, address=address, reason=reason)
        self.index.record_event("connection_dropped", reason, "WARNING", "", address)

    # -- services ----------------------------------------------------------------------

    def _on_echo(self, ev: Any) -> int:
        peer = peer_of(ev.assoc)
        event(log, "echo", peer_ae=peer.ae_title, address=peer.address)
        return 0x0000

    def _on_store(self, ev: Any) -> int | tuple[int, Dataset]:
        peer = peer_of(ev.assoc)
        try:
            data = ev.encoded_dataset(include_meta=True)
            info = read_header(data, str(ev.request.AffectedSOPInstanceUID))
        except (InvalidUidError, ValueError) as exc:
            return self._refuse(peer, CANNOT_UNDERSTAND, f"unusable instance: {exc}")
        except Exception as exc:  # pydicom raises many types for broken data
            return self._refuse(
                peer, CANNOT_UNDERSTAND, f"dataset cannot be decoded: {type(exc).__name__}: {exc}"
            )
        path = self.storage.instance_path(info.study_uid, info.series_uid, info.sop_uid)
        try:
            self.storage.write_atomic(path, data)
        except OSError as exc:
            return self._refuse(peer, OUT_OF_RESOURCES, f"cannot write instance: {exc}")
        self.submit(
            Received(info, str(path), len(data), peer.ae_title, peer.address, self._forced(ev),
                     time.time())
        )  # fmt: skip
        with self._lock:
            self.received[str(id(ev.assoc))] += 1
        return 0x0000

    def _forced(self, ev: Any) -> bool:
        force = self.config.dicom.force_ae_title
        if not force:
            return False
        called = str(ev.assoc.requestor.primitive.called_ae_title).strip()
        return called == force

    def _refuse(self, peer: Peer, status: int, reason: str) -> int:
        event(
            log, "instance_refused", logging.WARNING, peer_ae=peer.ae_title,
            address=peer.address, status=f"0x{status:04X}", reason=reason,
        )  # fmt: skip
        self.index.record_event("instance_refused", reason, "ERROR", peer.ae_title, peer.address)
        return status


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    values = listed(value)
    return "\\".join(values) if values is not None else str(value)


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _pos_key(ipp: Any) -> str | None:
    try:
        return "\\".join(f"{float(v):.1f}" for v in ipp)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _frames(ds: Dataset) -> list[tuple[str | None, float | None]]:
    """(slice position, inversion time) per frame, for classic and enhanced MR."""
    if "PerFrameFunctionalGroupsSequence" not in ds:
        return [(_pos_key(ds.get("ImagePositionPatient")), _float(ds.get("InversionTime")))]
    shared = ds.get("SharedFunctionalGroupsSequence", [Dataset()])[0]

    def ti_of(group: Dataset) -> float | None:
        timing = group.get("MRTimingAndRelatedParametersSequence")
        if timing and "InversionTimes" in timing[0]:
            times = timing[0].InversionTimes
            if listed(times) is not None:
                times = times[0] if len(times) else None
            return _float(times)
        return None

    shared_ti = ti_of(shared)
    frames = []
    for group in ds.PerFrameFunctionalGroupsSequence:
        plane = group.get("PlanePositionSequence") or shared.get("PlanePositionSequence")
        pos = _pos_key(plane[0].get("ImagePositionPatient")) if plane else None
        ti = ti_of(group)
        frames.append((pos, ti if ti is not None else shared_ti))
    return frames


SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _pixel_element(data: bytes, offset: int, ds: Dataset) -> tuple[int, int] | None:
    """(declared length, bytes after the element header) of Pixel Data at ``offset``."""
    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    if tsyntax is None or offset + 8 > len(data):
        return None
    little = tsyntax != "1.2.840.10008.1.2.2"
    order = "little" if little else "big"
    if tsyntax == "1.2.840.10008.1.2":  # implicit VR: tag, 4-byte length
        return int.from_bytes(data[offset + 4 : offset + 8], order), len(data) - offset - 8
    if offset + 12 > len(data):
        return None
    # explicit VR OB/OW: tag, VR, 2 reserved bytes, 4-byte length
    return int.from_bytes(data[offset + 8 : offset + 12], order), len(data) - offset - 12


def check_pixel_data(data: bytes, offset: int | None, ds: Dataset) -> None:
    """Raise ValueError for pixel data cut off in transit or shorter than the image.

    pydicom reads short values silently, so a dataset truncated on the way must be
    caught here, before the peer is told it was stored."""
    if offset is None or "Rows" not in ds:
        return
    if ds.file_meta.get("TransferSyntaxUID") == "1.2.840.10008.1.2.1.99":
        full = pydicom.dcmread(io.BytesIO(data))  # deflated: offsets are not in the bytes
        value = full.get_item("PixelData")
        length, available = (value.length, len(value.value or b"")) if value else (0, 0)
    else:
        found = _pixel_element(data, offset, ds)
        if found is None:
            raise ValueError("dataset is truncated inside the Pixel Data element header")
        length, available = found
    if length == 0xFFFFFFFF:
        if SEQUENCE_DELIMITER not in data[-64:]:
            raise ValueError("dataset is truncated: encapsulated pixel data has no end marker")
        return
    if available < length:
        raise ValueError(
            f"dataset is truncated: Pixel Data declares {length} bytes, {available} arrived"
        )
    expected = native_pixel_bytes(ds)
    if expected is not None and length < expected:
        raise ValueError(
            f"pixel data is too short: {length} bytes for {expected} expected from Rows, "
            "Columns, BitsAllocated and frames"
        )


def native_pixel_bytes(ds: Dataset) -> int | None:
    """Bytes uncompressed pixel data must hold, or None if the header does not say."""
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.BitsAllocated)
        n = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames
    except (AttributeError, TypeError, ValueError):
        return None
    return (n * bits + 7) // 8


def read_header(data: bytes, affected_sop_uid: str | None = None) -> InstanceInfo:
    """What the index needs from an encoded instance; raises if it is unusable."""
    fp = io.BytesIO(data)
    ds = pydicom.dcmread(fp, stop_before_pixels=True)
    # pydicom stops with the file positioned at the Pixel Data tag, if there is one.
    at = fp.tell()
    tag = data[at : at + 4]
    pixel_tags = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")
    check_pixel_data(data, at if tag in pixel_tags else None, ds)
    sop_uid = check_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID")
    if affected_sop_uid is not None and affected_sop_uid.strip() != sop_uid:
        raise ValueError(
            f"the request's Affected SOP Instance UID {affected_sop_uid!r} differs from the "
            f"dataset's SOPInstanceUID {sop_uid!r}"
        )
    meta = ds.file_meta
    return InstanceInfo(
        study_uid=check_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID"),
        series_uid=check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID"),
        sop_uid=sop_uid,
        sop_class_uid=check_uid(ds.get("SOPClassUID"), "SOPClassUID"),
        transfer_syntax=str(meta.get("TransferSyntaxUID", "")),
        modality=_text(ds, "Modality")[:16],
        series_description=_text(ds, "SeriesDescription")[:64],
        series_number=_int(ds, "SeriesNumber"),
        instance_number=_int(ds, "InstanceNumber"),
        image_type=_text(ds, "ImageType")[:256],
        scanning_sequence=_text(ds, "ScanningSequence")[:64],
        frames=_frames(ds),
        patient={
            k: _text(ds, k) for k in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")
        },
        study={
            k: _text(ds, k)
            for k in ("AccessionNumber", "StudyDate", "StudyTime", "StudyDescription", "StudyID")
        },
    )
