"""STOW-RS as a way out: results to a DICOMweb server (a destination with ``protocol =
"stow"``), one multipart/related request per batch, each instance's outcome read from
the server's answer (PS3.18 10.5.3), so a partial refusal retries only what failed."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx

from node import __version__
from node.config import Destination
from node.http import multipart

DICOM_PART = {"Content-Type": "application/dicom"}


class StowClient:
    def __init__(self, destination: Destination, timeout_s: float) -> None:
        self.destination = destination
        self.url = destination.url.rstrip("/") + "/studies"
        headers = {"User-Agent": f"lge-node/{__version__}", "Accept": "application/dicom+json"}
        if destination.token:
            headers["Authorization"] = f"Bearer {destination.token}"
        auth = None
        if destination.username is not None and destination.password is not None:
            auth = httpx.BasicAuth(destination.username, destination.password)
        verify: Any = True
        if destination.ca_certificate:
            verify = ssl.create_default_context(cafile=str(destination.ca_certificate))
        self.client = httpx.Client(headers=headers, auth=auth, verify=verify, timeout=timeout_s)

    def close(self) -> None:
        self.client.close()

    def store(self, items: list[tuple[str, str]]) -> dict[str, str]:
        """Send ``(SOP Instance UID, path)`` pairs; returns the error of each that was not
        stored (an empty dict: all stored). Raises `httpx.HTTPError` when the server
        cannot be reached at all."""
        boundary = multipart.new_boundary()
        errors: dict[str, str] = {}
        bodies = []
        for sop, path in items:
            try:
                bodies.append(Path(path).read_bytes())
            except FileNotFoundError:
                errors[sop] = f"result file missing: {path}"
        sendable = [(sop, p) for sop, p in items if sop not in errors]
        if not sendable:
            return errors
        response = self.client.post(
            self.url,
            content=b"".join(multipart.encode(((DICOM_PART, b) for b in bodies), boundary)),
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
            },
        )
        if response.status_code in (200, 202):
            failed = _failed(response)
            for sop, _ in sendable:
                if sop in failed:
                    errors[sop] = f"STOW-RS to {self.destination.url} refused it: {failed[sop]}"
            return errors
        why = f"STOW-RS to {self.destination.url} answered {response.status_code}"
        text = " ".join(response.text.split())[:200]
        for sop, _ in sendable:
            errors[sop] = f"{why}: {text}" if text else why
        return errors


def _failed(response: httpx.Response) -> dict[str, str]:
    """SOP Instance UID -> failure reason, from the Failed SOP Sequence (00081198)."""
    try:
        payload = response.json()
    except ValueError:
        return {}
    if isinstance(payload, list):  # some servers wrap the response dataset in a list
        payload = payload[0] if payload else {}
    out = {}
    for item in (payload.get("00081198") or {}).get("Value", []) or []:
        sop = ((item.get("00081155") or {}).get("Value") or [""])[0]
        reason = ((item.get("00081197") or {}).get("Value") or [None])[0]
        out[sop] = "failure reason " + (f"0x{int(reason):04X}" if reason is not None else "unknown")
    return out
