"""DICOMweb (PS3.18) over what the node holds, at ``/dicom-web``:

- **STOW-RS** (``POST /studies[/{study}]``, operator role): every part goes through the
  same `Intake` as a C-STORE (checks, atomic write, journal), and the answer comes only
  once each accepted instance is on disk; refusals carry the C-STORE status as Failure
  Reason and a ``Warning`` header with the reason.
- **QIDO-RS** (viewer role): studies, series and instances, matched by the Q/R SCP's
  C-FIND matching (`QueryRetrieveScp.match`), so both protocols answer alike.
- **WADO-RS** (viewer role): instances, metadata (bulk data as BulkDataURI), frames and
  bulk data, so a viewer such as OHIF can use the node itself as its data source.
"""

from __future__ import annotations

import io
import logging
import mmap
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pydicom
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian
from starlette.concurrency import run_in_threadpool

from node.dimse.common import Dimse
from node.dimse.qr_scp import QueryError, QueryRetrieveScp, keys_for
from node.http import multipart
from node.http.auth import Principal
from node.http.context import Console, require
from node.logs import event
from node.store.intake import Sender, Verdict
from node.store.records import QrRow

log = logging.getLogger("node.dicomweb")

router = APIRouter(prefix="/dicom-web", tags=["DICOMweb"])
Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]

DICOM_JSON = "application/dicom+json"
BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
BULK_THRESHOLD = 1024  # top-level binary values above this are BulkDataURIs
MAX_WARNINGS = 10  # Warning headers per response; the rest are in the events


def _ctx(request: Request) -> Console:
    ctx: Console = request.app.state.console
    return ctx


def _root(request: Request) -> str:
    """The DICOMweb root: ``http.public_url``, else as the client reached it (Host)."""
    public = _ctx(request).config.http.public_url
    return (public or str(request.base_url)).rstrip("/") + "/dicom-web"


def _warning(text: str) -> str:
    """An RFC 7234 Warning header value (PS3.18 8.6.2), latin-1 safe."""
    clean = re.sub(r"[^\x20-\x7e]", "?", text).replace('"', "'")[:300]
    return f'299 lge-node "{clean}"'


# -- STOW-RS ---------------------------------------------------------------------------


def _boundary(content_type: str, part_type: str) -> bytes:
    """The boundary of a ``multipart/related; type="<part_type>"`` body (415 otherwise)."""
    main, values = multipart.content_type(content_type)
    if main != "multipart/related":
        raise HTTPException(415, f'STOW-RS takes multipart/related; type="{part_type}"')
    kind = values.get("type", part_type).lower()
    if kind != part_type:
        raise HTTPException(
            415, f"parts of type {kind} are not supported: send {part_type} (Part 10 files)"
        )
    if not values.get("boundary"):
        raise HTTPException(400, "multipart/related without a boundary")
    return values["boundary"].encode("latin-1")


@dataclass(frozen=True)
class Outcome:
    """One STOW-RS part: what the intake said, with the part's number for the reasons."""

    part: int
    verdict: Verdict


def _sender(who: Principal, request: Request) -> Sender:
    return Sender(who.sender, request.client.host if request.client else "")


def _store_parts(
    ctx: Console, body: bytes | mmap.mmap, boundary: bytes, sender: Sender, study: str | None
) -> list[Outcome]:
    limit = ctx.config.storage.max_instance_mb * 2**20
    out = []
    for n, (headers, start, end) in enumerate(multipart.parts(body, boundary), start=1):
        kind = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
        if kind != "application/dicom":
            verdict = ctx.intake.refuse(
                sender, Dimse.CANNOT_UNDERSTAND, f"part {n} is {kind}, not application/dicom"
            )
        elif end - start > limit:
            verdict = ctx.intake.refuse(
                sender, Dimse.OUT_OF_RESOURCES,
                f"part {n} of {(end - start) / 2**20:.1f} MiB exceeds storage.max_instance_mb "
                f"({ctx.config.storage.max_instance_mb:g})",
            )  # fmt: skip
        else:
            verdict = ctx.intake.accept(bytes(body[start:end]), sender, study_uid=study)
        out.append(Outcome(n, verdict))
    return out


@router.post("/studies", summary="STOW-RS: store instances")
@router.post("/studies/{study}", summary="STOW-RS: store instances of one study")
async def stow(request: Request, who: Operator, study: str | None = None) -> Response:
    ctx = _ctx(request)
    boundary = _boundary(request.headers.get("content-type", ""), "application/dicom")
    limit = int(ctx.config.http.max_stow_mb * 2**20)
    sender = _sender(who, request)
    # Spooled to an unlinked file in the data folder (not memory, not /tmp): a crash
    # leaves nothing behind, and a large study costs no memory.
    with tempfile.TemporaryFile(dir=ctx.storage.root, prefix=".stow-") as spool:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(
                    413, f"the request exceeds http.max_stow_mb ({ctx.config.http.max_stow_mb:g})"
                )
            spool.write(chunk)
        if size == 0:
            raise HTTPException(400, "empty STOW-RS request")
        spool.flush()
        with mmap.mmap(spool.fileno(), 0, access=mmap.ACCESS_READ) as body:
            try:
                outcomes = await run_in_threadpool(_store_parts, ctx, body, boundary, sender, study)
            except multipart.MultipartError as exc:
                raise HTTPException(400, f"not a valid multipart body: {exc}") from None
    if not outcomes:
        raise HTTPException(400, "the request holds no part")
    return _stow_response(ctx, request, who, study, outcomes)


def _stow_response(
    ctx: Console, request: Request, who: Principal, study: str | None, outcomes: list[Outcome]
) -> Response:
    root = _root(request)
    done, failed = [], []
    for o in outcomes:
        info = o.verdict.info
        item: dict[str, Any] = {
            "00081150": _attr("UI", info.sop_class_uid if info else None),
            "00081155": _attr("UI", info.sop_uid if info else None),
        }
        if o.verdict.ok and info:
            item["00081190"] = _attr(
                "UR", f"{root}/studies/{info.study_uid}/series/{info.series_uid}"
                f"/instances/{info.sop_uid}",
            )  # fmt: skip
            done.append(item)
        else:
            item["00081197"] = _attr("US", o.verdict.status)
            failed.append(item)
    payload: dict[str, Any] = {}
    studies = {o.verdict.info.study_uid for o in outcomes if o.verdict.ok and o.verdict.info}
    if len(studies) == 1:
        payload["00081190"] = _attr("UR", f"{root}/studies/{studies.pop()}")
    payload["00081199"] = {"vr": "SQ", "Value": done}
    if failed:
        payload["00081198"] = {"vr": "SQ", "Value": failed}
    status = 200 if not failed else 202 if done else 409
    outcome = "ok" if not failed else "partial" if done else "refused"
    detail = f"{len(done)} stored, {len(failed)} refused"
    address = request.client.host if request.client else ""
    ctx.repository.record_audit(who.name, who.role, "stow", study or "", outcome, detail, address)
    event(log, "stow", user=who.name, sender=who.sender, stored=len(done), refused=len(failed))
    reasons = [f"part {o.part}: {o.verdict.reason}" for o in outcomes if not o.verdict.ok]
    response = JSONResponse(payload, status_code=status, media_type=DICOM_JSON)
    for reason in reasons[:MAX_WARNINGS]:
        response.headers.append("Warning", _warning(reason))
    return response


def _attr(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr} if value in (None, "") else {"vr": vr, "Value": [value]}


# -- QIDO-RS ---------------------------------------------------------------------------

# Attributes returned without includefield (PS3.18 table 10.6.3-3..5), where the index
# holds them.
DEFAULTS = {
    "STUDY": [
        "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "PatientName",
        "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
        "StudyDescription", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    ],
    "SERIES": [
        "Modality", "SeriesDescription", "SeriesNumber", "SeriesInstanceUID",
        "NumberOfSeriesRelatedInstances",
    ],
    "IMAGE": ["SOPClassUID", "SOPInstanceUID", "InstanceNumber"],
}  # fmt: skip
COUNTS = {
    "STUDY": {"ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"},
    "SERIES": {"NumberOfSeriesRelatedInstances"},
    "IMAGE": set(),
}
CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}


def _keyword(key: str) -> str | None:
    """A query key as a keyword: a keyword, or a tag as 8 hex digits."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        return keyword_for_tag(int(key, 16)) or None
    return key if key and key[0].isupper() and "." not in key else None


def qido(
    request: Request, level: str, study: str | None = None, series: str | None = None
) -> Response:
    ctx = _ctx(request)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    keys = keys_for(level)
    wanted = list(DEFAULTS[level])
    if level != "STUDY" and study is None:  # a query across studies: say which study
        wanted += [k for k in DEFAULTS["STUDY"] if k not in COUNTS["STUDY"]]
    if level == "IMAGE" and series is None:
        wanted += [k for k in DEFAULTS["SERIES"] if k not in COUNTS["SERIES"]]
    for key in wanted:
        setattr(identifier, key, None)
    ignored: list[str] = []
    limit, offset = 1000, 0
    for key, value in request.query_params.multi_items():
        if key in ("limit", "offset"):
            try:
                number = int(value)
            except ValueError:
                raise HTTPException(400, f"{key} must be a whole number") from None
            if number < 0:
                raise HTTPException(400, f"{key} must not be negative")
            limit, offset = (number, offset) if key == "limit" else (limit, number)
            continue
        if key == "includefield":
            for name in value.split(","):
                kw = _keyword(name.strip())
                if kw in keys or kw in COUNTS[level]:
                    setattr(identifier, kw, None)
            continue
        if key in CONTROL:
            continue  # fuzzymatching: matching is exact or wildcard, as C-FIND's
        kw = _keyword(key)
        if kw is None or kw not in keys:
            ignored.append(key)
            continue
        if dictionary_VR(kw) == "UI":
            value = value.replace(",", "\\")  # QIDO lists UIDs with commas
        setattr(identifier, kw, value)
    if study is not None:
        identifier.StudyInstanceUID = study
    if series is not None:
        identifier.SeriesInstanceUID = series
    scp = QueryRetrieveScp(ctx.config, ctx.repository)
    try:
        _, rows = scp.match(identifier)
    except QueryError as exc:
        raise HTTPException(400, str(exc)) from None
    except Exception as exc:  # a value pydicom cannot take (a malformed date...)
        raise HTTPException(400, f"bad query: {exc}") from None
    groups = scp.group(level, _ordered(rows))
    root = _root(request)
    out = []
    for group in groups[offset : offset + limit]:
        ds = scp.response(level, identifier, group)
        del ds.QueryRetrieveLevel
        r = group[0]
        url = f"{root}/studies/{r.study.study_uid}"
        if level != "STUDY":
            url += f"/series/{r.series.series_uid}"
        if level == "IMAGE":
            url += f"/instances/{r.instance.sop_uid}"
        item = ds.to_json_dict()
        item["00081190"] = _attr("UR", url)
        out.append(item)
    response = JSONResponse(out, media_type=DICOM_JSON)
    if ignored:
        response.headers.append("Warning", _warning(f"unsupported query keys ignored: {ignored}"))
    if len(groups) > offset + limit:
        response.headers.append(
            "Warning", _warning(f"{len(groups) - offset - limit} more results: use offset")
        )
    return response


def _ordered(rows: list[QrRow]) -> list[QrRow]:
    """Newest study first, then series and instances by number (a worklist's order)."""
    rows = sorted(
        rows, key=lambda r: (r.series.series_number or 0, r.instance.instance_number or 0)
    )
    return sorted(rows, key=lambda r: (r.study.study_date, r.study.study_time), reverse=True)


@router.get("/studies", summary="QIDO-RS: search studies")
def search_studies(request: Request, who: Viewer) -> Response:
    return qido(request, "STUDY")


@router.get("/series", summary="QIDO-RS: search series")
def search_all_series(request: Request, who: Viewer) -> Response:
    return qido(request, "SERIES")


@router.get("/studies/{study}/series", summary="QIDO-RS: search a study's series")
def search_series(request: Request, who: Viewer, study: str) -> Response:
    return qido(request, "SERIES", study)


@router.get("/instances", summary="QIDO-RS: search instances")
def search_all_instances(request: Request, who: Viewer) -> Response:
    return qido(request, "IMAGE")


@router.get("/studies/{study}/instances", summary="QIDO-RS: search a study's instances")
def search_study_instances(request: Request, who: Viewer, study: str) -> Response:
    return qido(request, "IMAGE", study)


@router.get(
    "/studies/{study}/series/{series}/instances", summary="QIDO-RS: search a series' instances"
)
def search_instances(request: Request, who: Viewer, study: str, series: str) -> Response:
    return qido(request, "IMAGE", study, series)


# -- WADO-RS ---------------------------------------------------------------------------


def _instances(
    ctx: Console, study: str, series: str | None = None, sop: str | None = None
) -> list[QrRow]:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = study
    if series is not None:
        identifier.SeriesInstanceUID = series
    if sop is not None:
        identifier.SOPInstanceUID = sop
    try:
        _, rows = QueryRetrieveScp(ctx.config, ctx.repository).match(identifier)
    except Exception as exc:  # a malformed UID in the path
        raise HTTPException(400, f"bad request: {exc}") from None
    if not rows:
        what = sop or series or study
        raise HTTPException(404, f"{what} is not held by this node")
    return _ordered(rows)


def _accepted(request: Request, media: str) -> set[str] | None:
    """Transfer syntaxes the client takes for ``media`` parts ("*" = any as stored;
    no transfer-syntax parameter = Explicit VR Little Endian, PS3.18 8.7.3.5.2);
    None when the Accept header rules ``media`` out."""
    accept = request.headers.get("accept", "")
    if not accept.strip():
        return {"*"}
    found: set[str] = set()
    acceptable = False
    for item in accept.split(","):
        main, _, rest = item.partition(";")
        main = main.strip().lower()
        params = dict(multipart.params(rest))
        if main in ("*/*", "multipart/*"):
            acceptable = True
            found.add("*")
        elif (
            main == "multipart/related" and params.get("type", media).lower() in (media, "*/*")
        ) or main == media:
            acceptable = True
            found.add(params.get("transfer-syntax", ExplicitVRLittleEndian))
    return found if acceptable else None


def _multipart(chunks: Iterator[tuple[str, bytes]], part_type: str) -> StreamingResponse:
    boundary = multipart.new_boundary()
    items = (({"Content-Type": kind}, data) for kind, data in chunks)
    return StreamingResponse(
        multipart.encode(items, boundary),
        media_type=f'multipart/related; type="{part_type}"; boundary={boundary}',
    )


def _deliverable(stored: str, wanted: set[str]) -> bool:
    """As stored (any syntax taken, or this one), or decoded to Explicit VR LE."""
    return "*" in wanted or stored in wanted or ExplicitVRLittleEndian in wanted


def _as_syntax(path: str, stored: str, wanted: set[str]) -> tuple[str, bytes]:
    """The file in a transfer syntax the client takes: as stored when it may, else
    decoded to Explicit VR Little Endian (`_deliverable` said one of them is taken)."""
    data = Path(path).read_bytes()
    if "*" in wanted or stored in wanted:
        return stored, data
    ds = pydicom.dcmread(io.BytesIO(data))
    if UID(stored).is_compressed:
        ds.decompress()  # pydicom's decoders (pylibjpeg, as the pipeline reads them)
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return ExplicitVRLittleEndian, out.getvalue()


def retrieve(request: Request, rows: list[QrRow]) -> Response:
    wanted = _accepted(request, "application/dicom")
    if wanted is None:
        raise HTTPException(
            406, 'instances are served as multipart/related; type="application/dicom"'
        )
    if not _deliverable(rows[0].instance.transfer_syntax, wanted):
        raise HTTPException(406, f"cannot provide transfer syntax {sorted(wanted)}")

    def chunks() -> Iterator[tuple[str, bytes]]:
        for r in rows:
            if not _deliverable(r.instance.transfer_syntax, wanted):
                event(log, "wado_not_deliverable", logging.WARNING, sop=r.instance.sop_uid)
                continue
            try:
                syntax, data = _as_syntax(r.instance.path, r.instance.transfer_syntax, wanted)
            except OSError as exc:
                event(
                    log, "wado_missing_file", logging.ERROR, sop=r.instance.sop_uid, error=str(exc)
                )
                continue
            yield f"application/dicom; transfer-syntax={syntax}", data

    return _multipart(chunks(), "application/dicom")


@router.get("/studies/{study}", summary="WADO-RS: a study's instances")
def retrieve_study(request: Request, who: Viewer, study: str) -> Response:
    return retrieve(request, _instances(_ctx(request), study))


@router.get("/studies/{study}/series/{series}", summary="WADO-RS: a series' instances")
def retrieve_series(request: Request, who: Viewer, study: str, series: str) -> Response:
    return retrieve(request, _instances(_ctx(request), study, series))


@router.get("/studies/{study}/series/{series}/instances/{sop}", summary="WADO-RS: an instance")
def retrieve_instance(request: Request, who: Viewer, study: str, series: str, sop: str) -> Response:
    return retrieve(request, _instances(_ctx(request), study, series, sop))


def _metadata(row: QrRow, root: str) -> dict[str, Any]:
    ds = pydicom.dcmread(row.instance.path)
    url = (
        f"{root}/studies/{row.study.study_uid}/series/{row.series.series_uid}"
        f"/instances/{row.instance.sop_uid}"
    )
    bulk: dict[str, dict[str, str]] = {}
    for elem in list(ds):
        if elem.VR in BULK_VRS and elem.value is not None and len(elem.value) > BULK_THRESHOLD:
            tag = f"{int(elem.tag):08X}"
            bulk[tag] = {"vr": elem.VR, "BulkDataURI": f"{url}/bulk/{tag}"}
            del ds[elem.tag]
    item = ds.to_json_dict()
    item.update(bulk)
    # The syntax frames and bulk data come in unless asked otherwise (PS3.18 F.2.6.4).
    item["00083002"] = _attr("UI", row.instance.transfer_syntax)
    return item


def metadata(request: Request, rows: list[QrRow]) -> Response:
    root = _root(request)
    out = []
    for r in rows:
        try:
            out.append(_metadata(r, root))
        except OSError as exc:
            event(log, "wado_missing_file", logging.ERROR, sop=r.instance.sop_uid, error=str(exc))
    return JSONResponse(out, media_type=DICOM_JSON)


@router.get("/studies/{study}/metadata", summary="WADO-RS: a study's metadata")
def study_metadata(request: Request, who: Viewer, study: str) -> Response:
    return metadata(request, _instances(_ctx(request), study))


@router.get("/studies/{study}/series/{series}/metadata", summary="WADO-RS: a series' metadata")
def series_metadata(request: Request, who: Viewer, study: str, series: str) -> Response:
    return metadata(request, _instances(_ctx(request), study, series))


@router.get(
    "/studies/{study}/series/{series}/instances/{sop}/metadata",
    summary="WADO-RS: an instance's metadata",
)
def instance_metadata(request: Request, who: Viewer, study: str, series: str, sop: str) -> Response:
    return metadata(request, _instances(_ctx(request), study, series, sop))


# Media types of compressed frames (PS3.18 table 8.7.3-2); octet-stream with the
# transfer-syntax parameter is what viewers (OHIF) ask for.
FRAME_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/x-dicom-rle",
}


def _native_frames(ds: Dataset, numbers: list[int]) -> list[bytes]:
    """Frames of native (uncompressed) pixel data as little-endian bytes."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples, bits = int(ds.get("SamplesPerPixel", 1)), int(ds.BitsAllocated)
    data = ds.PixelData
    if bits == 1:  # packed across frame boundaries (SEG): unpack, cut, repack
        per = rows * cols * samples
        flat = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        return [
            np.packbits(flat[(n - 1) * per : n * per], bitorder="little").tobytes() for n in numbers
        ]
    per = rows * cols * samples * bits // 8
    out = [bytes(data[(n - 1) * per : n * per]) for n in numbers]
    if ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian and bits > 8:
        dtype = np.dtype(f">u{bits // 8}")
        out = [np.frombuffer(f, dtype).astype(dtype.newbyteorder("<")).tobytes() for f in out]
    return out


def _frame_numbers(text: str, count: int) -> list[int]:
    try:
        numbers = [int(n) for n in text.split(",")]
    except ValueError:
        raise HTTPException(400, f"frame list {text!r} is not comma-separated numbers") from None
    bad = [n for n in numbers if not 1 <= n <= count]
    if bad:
        raise HTTPException(404, f"frames {bad} do not exist (the instance has {count})")
    return numbers


@router.get(
    "/studies/{study}/series/{series}/instances/{sop}/frames/{frames}",
    summary="WADO-RS: frames (pixel data)",
)
def retrieve_frames(
    request: Request, who: Viewer, study: str, series: str, sop: str, frames: str
) -> Response:
    row = _instances(_ctx(request), study, series, sop)[0]
    wanted = _accepted(request, "application/octet-stream")
    compressed_ok = _accepted(request, "image/*") or set()
    ds = pydicom.dcmread(row.instance.path)
    if "PixelData" not in ds:
        raise HTTPException(404, f"instance {sop} has no pixel data")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    numbers = _frame_numbers(frames, count)
    stored = str(ds.file_meta.TransferSyntaxUID)
    if not UID(stored).is_compressed:
        if wanted is None:
            raise HTTPException(406, "uncompressed frames are application/octet-stream")
        data = _native_frames(ds, numbers)
        kind = f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"
        return _multipart(((kind, f) for f in data), "application/octet-stream")
    if wanted is not None and ("*" in wanted or stored in wanted):
        encoded = list(generate_frames(ds.PixelData, number_of_frames=count))
        kind = f"application/octet-stream; transfer-syntax={stored}"
        return _multipart(((kind, encoded[n - 1]) for n in numbers), "application/octet-stream")
    media = FRAME_MEDIA.get(stored)
    if media and ("*" in compressed_ok or stored in compressed_ok):
        encoded = list(generate_frames(ds.PixelData, number_of_frames=count))
        kind = f"{media}; transfer-syntax={stored}"
        return _multipart(((kind, encoded[n - 1]) for n in numbers), media)
    if wanted is None:
        raise HTTPException(406, "frames are served as application/octet-stream or image/*")
    ds.decompress()
    decoded = _native_frames(ds, numbers)
    kind = f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"
    return _multipart(((kind, f) for f in decoded), "application/octet-stream")


@router.get(
    "/studies/{study}/series/{series}/instances/{sop}/bulk/{tag}",
    summary="WADO-RS: a bulk data value (from a metadata BulkDataURI)",
)
def retrieve_bulk(
    request: Request, who: Viewer, study: str, series: str, sop: str, tag: str
) -> Response:
    row = _instances(_ctx(request), study, series, sop)[0]
    if not re.fullmatch(r"[0-9A-Fa-f]{8}", tag):
        raise HTTPException(400, f"{tag!r} is not a tag (8 hex digits)")
    ds = pydicom.dcmread(row.instance.path)
    elem = ds.get(int(tag, 16))
    if elem is None or elem.VR not in BULK_VRS:
        raise HTTPException(404, f"instance {sop} has no bulk data {tag}")
    stored = str(ds.file_meta.TransferSyntaxUID)
    syntax = stored if int(tag, 16) == 0x7FE00010 else ExplicitVRLittleEndian
    kind = f"application/octet-stream; transfer-syntax={syntax}"
    return _multipart(iter([(kind, bytes(elem.value))]), "application/octet-stream")
