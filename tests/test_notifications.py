"""Notifications: a webhook (a real HTTP server on loopback) and a mailbox (a real SMTP
server, aiosmtpd, on loopback) are told when a job fails for good, when a destination
keeps failing, and when the disk runs low - once per condition, not at every check."""

from __future__ import annotations

import json
import threading
from email import message_from_bytes
from email.message import Message
from email.policy import default
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest
from aiosmtpd.controller import Controller

from tests.node_harness import NodeProcess, copy_study, storescu
from tests.orthanc import free_port

pytestmark = pytest.mark.timeout(600)


class Hook:
    """Collects what the node POSTs."""

    def __init__(self) -> None:
        self.notices: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                hook.notices.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kinds(self) -> list[str]:
        return [n["kind"] for n in self.notices]


class Mailbox:
    """An SMTP server on loopback keeping what it is sent."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        box = self

        class Handler:
            async def handle_DATA(self, server: object, session: object, envelope) -> str:
                box.messages.append(message_from_bytes(envelope.content, policy=default))
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=free_port())

    def __enter__(self) -> Mailbox:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.messages]


def test_the_webhook_hears_of_failed_jobs_failing_destinations_and_low_disk(
    psir_classic, tmp_path: Path
) -> None:
    hook = Hook()
    dead_port = free_port()  # nobody listens: every send fails
    mailbox = Mailbox()
    notify = {
        "webhook_url": hook.url, "destination_failing_minutes": 0.05, "disk_low_mb": 1e12,
        "check_interval_s": 1.0, "repeat_minutes": 60,
        "smtp_host": "127.0.0.1", "smtp_port": mailbox.controller.port,
        "mail_from": "node@lab.example", "mail_to": ["pacs-admin@lab.example"],
    }  # fmt: skip
    dest = {"name": "gone", "ae_title": "GONE", "host": "127.0.0.1", "port": dead_port}
    with mailbox, NodeProcess(tmp_path / "node", destinations=[dest], notify=notify,
                     dispatch={"retry_initial_s": 0.5, "retry_max_s": 1.0}) as node:  # fmt: skip
        _, good, files = copy_study(psir_classic.out_dir / "dicom", tmp_path / "good")
        storescu(node.port, files)
        _, bad, broken = copy_study(psir_classic.out_dir / "dicom", tmp_path / "bad")
        ds = pydicom.dcmread(broken[3])  # mixed orientations: the job fails for good
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.save_as(broken[3], enforce_file_format=True)
        storescu(node.port, broken)
        node.wait_for(lambda: {"job_failed", "destination_failing", "disk_low"}
                      <= set(hook.kinds()), 180, "three kinds of notice")  # fmt: skip
        node.wait_for(lambda: len(node.query(
            "SELECT 1 FROM outbox WHERE attempts >= 3")) > 0, 60, "more failed sends")  # fmt: skip
        node.wait_for(lambda: len(mailbox.messages) >= 3, 60, "three e-mails")
    by_kind = {n["kind"]: n for n in hook.notices}
    failed = by_kind["job_failed"]
    assert failed["details"]["series"] == bad and "not a usable LGE series" in failed["message"]
    assert failed["node"] == "LGE_NODE" and failed["level"] == "ERROR"
    failing = by_kind["destination_failing"]
    assert failing["details"]["destination"] == "gone" and "objects waiting" in failing["message"]
    assert "MiB free" in by_kind["disk_low"]["message"]
    # Checked every second for many seconds: still told once per condition.
    assert hook.kinds().count("disk_low") == 1
    assert hook.kinds().count("destination_failing") == 1
    assert good not in json.dumps(by_kind["job_failed"])  # the good series did not fail
    # The same notices by e-mail, once each, with what the operator needs in the text.
    subjects = mailbox.subjects()
    assert sorted(subjects) == sorted(
        f"[lge-node LGE_NODE] {n['level']}: {n['kind']}" for n in hook.notices
    ), subjects
    mail = next(m for m in mailbox.messages if m["Subject"].endswith("job_failed"))
    assert mail["To"] == "pacs-admin@lab.example" and mail["From"] == "node@lab.example"
    text = mail.get_content()
    assert f"series: {bad}" in text and "not a usable LGE series" in text
    assert "not a medical device" in text
