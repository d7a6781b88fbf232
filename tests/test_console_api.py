"""The operator's REST API and probes on a running node (real HTTP on loopback, a real
Orthanc as the destination, studies sent with DCMTK storescu): who may read and act,
what each action does to the node, and the audit trail of it all."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from node.http.auth import hash_password, new_token
from tests.node_harness import NodeProcess, copy_study, reports_for, storescu
from tests.orthanc import Orthanc, free_port

pytestmark = pytest.mark.timeout(600)

PASSWORDS = {"ada": "admin-pass-1", "otto": "operator-pass-1", "vera": "viewer-pass-1"}
ROLES = {"ada": "admin", "otto": "operator", "vera": "viewer"}
TOKEN, TOKEN_SHA = new_token()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("console")
    node_port = free_port()
    pacs = Orthanc(work / "orthanc", modalities={"lge": ["LGE_NODE", "127.0.0.1", node_port]})
    users = [
        {"name": n, "role": ROLES[n], "password_hash": hash_password(p)}
        for n, p in PASSWORDS.items()
    ]
    http = {"port": free_port(), "users": users,
            "tokens": [{"name": "grafana", "role": "viewer", "sha256": TOKEN_SHA}]}  # fmt: skip
    destination = {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
                   "port": pacs.dicom_port}  # fmt: skip
    node = NodeProcess(work / "node", destinations=[destination], port=node_port, http=http)
    with pacs, node:
        yield node, pacs


def client(node: NodeProcess, user: str | None = None) -> httpx.Client:
    auth = (user, PASSWORDS[user]) if user else None
    return httpx.Client(base_url=node.http_url, auth=auth, timeout=30)


@pytest.fixture(scope="module")
def processed(site, phantom_factory, tmp_path_factory) -> tuple[str, str]:
    """One study sent by the scanner and processed: (study UID, series UID)."""
    node, _ = site
    case = phantom_factory(seed=7, kind="psir")
    study, series, files = copy_study(case.out_dir / "dicom", tmp_path_factory.mktemp("s"))
    storescu(node.port, files)
    node.wait_done(series)
    return study, series


def test_probes_and_metrics_answer_without_login_and_the_api_does_not(site, processed) -> None:
    node, _ = site
    with client(node) as anonymous:
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        ready = anonymous.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        text = anonymous.get("/metrics").text
        for path in ("/api/v1/summary", "/api/v1/series", "/api/v1/audit"):
            response = anonymous.get(path)
            assert response.status_code == 401, path
        assert anonymous.get("/api/docs").status_code == 200  # the API documents itself
        assert "/api/v1/series/{series_uid}/rerun" in anonymous.get("/api/openapi.json").text
    samples = {
        line.split(" ")[0]: float(line.split(" ")[-1])
        for line in text.splitlines() if line and not line.startswith("#")
    }  # fmt: skip
    assert samples["lge_node_instances_received_total"] >= 14
    assert samples["lge_node_received_bytes_total"] > 14 * 10_000
    assert samples['lge_node_associations_total{outcome="accepted"}'] >= 1
    assert samples['lge_node_jobs{state="done"}'] >= 1
    assert samples['lge_node_job_duration_seconds_count{kind="analysis"}'] >= 1
    assert samples["lge_node_outbox_pending"] == 0
    assert samples["lge_node_disk_free_bytes"] > 0


def test_a_viewer_reads_an_operator_acts_and_an_admin_sees_the_audit(
    site, processed, tmp_path: Path
) -> None:
    node, pacs = site
    study, series = processed
    with client(node, "vera") as vera:
        page = vera.get("/api/v1/series", params={"search": series[:20]}).json()
        assert page["total"] >= 1 and page["items"][0]["series_uid"].startswith(series[:20])
        detail = vera.get(f"/api/v1/series/{series}").json()
        assert detail["series"]["state"] == "done" and detail["study"]["study_uid"] == study
        assert detail["metrics"]["myocardium_ml"] > 0
        assert {r["modality"] for r in detail["results"]} >= {"SEG", "SR", "DOC"}
        summary = vera.get("/api/v1/summary").json()
        assert summary["series"]["done"] >= 1 and summary["ready"] is True
        assert len(summary["received_per_hour"]) == 24
        assert sum(n for _, n in summary["received_per_hour"]) >= 14
        # Which model the results come from, and what it was trained on.
        ((model),) = summary["models"]
        assert (model["name"], model["default"], model["synthetic_trained"]) == (
            "default", True, True,
        )  # fmt: skip
        assert model["title"] == "lge-node demo models"
        assert model["trained_on"] == "lge-node phantom"
        dashboard = vera.get("/").text
        assert "lge-node demo models" in dashboard and "(synthetic-trained demo)" in dashboard
        refused = vera.post(f"/api/v1/series/{series}/rerun")
        assert refused.status_code == 403 and "operator" in refused.json()["detail"]
        assert vera.get("/api/v1/audit").status_code == 403
    with httpx.Client(base_url=node.http_url, timeout=30) as grafana:
        ok = grafana.get("/api/v1/summary", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        bad = grafana.get("/api/v1/summary", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401

    with client(node, "otto") as otto:
        done = otto.post(f"/api/v1/series/{series}/rerun")
        assert done.status_code == 200, done.text
        job = done.json()["result"]
        node.wait_for(lambda: otto.get(f"/api/v1/jobs/{job}").json()["state"] == "done",
                      120, "the re-run job")  # fmt: skip
        node.wait_done(series)
        again = otto.post(f"/api/v1/series/{series}/rerun")
        assert again.status_code == 200  # done again: may be re-run again
        node.wait_for(lambda: otto.get(f"/api/v1/jobs/{again.json()['result']}").json()["state"]
                      == "done", 120, "the second re-run")  # fmt: skip
        node.wait_done(series)  # and its results delivered
        unknown = otto.post("/api/v1/series/1.2.3.4/rerun")
        assert unknown.status_code == 409 and "no series 1.2.3.4" in unknown.json()["detail"]
    reports = reports_for(pacs, study, series)
    assert len(reports) == 3  # each re-run's report supersedes the one before
    newest = max(reports, key=lambda d: (d.ContentDate, d.ContentTime))
    assert "PredecessorDocumentsSequence" in newest

    with client(node, "ada") as ada:
        audit = ada.get("/api/v1/audit").json()["items"]
        seen = {(a["user"], a["action"], a["outcome"]) for a in audit}
        assert ("otto", "rerun", "ok") in seen
        assert ("otto", "rerun", "refused") in seen  # the unknown series
        assert ("vera", f"POST /api/v1/series/{series}/rerun", "refused") in seen
        config = ada.get("/api/v1/config").json()
        assert {u["password_hash"] for u in config["http"]["users"]} == {"***"}
        assert config["http"]["tokens"][0]["sha256"] == "***"
        assert "argon2" not in ada.get("/api/v1/config").text


def test_login_sets_a_session_and_wrong_passwords_are_audited(site) -> None:
    node, _ = site
    with httpx.Client(base_url=node.http_url, timeout=30) as browser:
        wrong = browser.post("/api/v1/login", data={"username": "otto", "password": "guess"})
        assert wrong.status_code == 401
        nobody = browser.post("/api/v1/login", data={"username": "mallory", "password": "x"})
        assert nobody.status_code == 401
        ok = browser.post("/api/v1/login", data={"username": "otto", "password": PASSWORDS["otto"]})
        assert ok.status_code == 200
        cookie = ok.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert browser.get("/api/v1/me").json() == {"name": "otto", "role": "operator",
                                                    "via": "session"}  # fmt: skip
        browser.post("/api/v1/logout")
        assert browser.get("/api/v1/me").status_code == 401
        browser.cookies.set("lge_node_session", "forged.value.here")
        assert browser.get("/api/v1/me").status_code == 401
    with client(node, "ada") as ada:
        audit = ada.get("/api/v1/audit", params={"limit": 500}).json()["items"]
    logins = [(a["user"], a["outcome"]) for a in audit if a["action"] == "login"]
    assert ("otto", "refused") in logins and ("mallory", "refused") in logins
    assert ("otto", "ok") in logins


def test_resend_and_retry_requeue_sends_and_dry_runs_explain_the_rules(
    site, processed, psir_classic
) -> None:
    node, _ = site
    _, series = processed
    with client(node, "otto") as otto:
        job = next(
            j for j in otto.get(f"/api/v1/series/{series}").json()["jobs"] if j["state"] == "done"
        )
        sent_before = node.query("SELECT count(*) FROM outbox WHERE state = 'sent'")[0][0]
        resent = otto.post(f"/api/v1/jobs/{job['id']}/resend", params={"destination": "pacs"})
        assert resent.status_code == 200, resent.text
        n = resent.json()["result"]
        assert n >= 5  # SEG, SR, PDF, summary and the overlays
        node.wait_for(
            lambda: node.query("SELECT count(*) FROM outbox WHERE state = 'sent'")[0][0]
            >= sent_before + n, 60, "the re-sent objects delivered",
        )  # fmt: skip
        assert otto.post(f"/api/v1/jobs/{job['id']}/resend",
                         params={"destination": "nowhere"}).status_code == 409  # fmt: skip
        retry = otto.post("/api/v1/destinations/pacs/retry")
        assert retry.status_code == 200 and retry.json()["action"] == "retry"
        dests = otto.get("/api/v1/destinations").json()
        assert dests[0]["name"] == "pacs" and dests[0]["pending"] == 0

        header = sorted((psir_classic.out_dir / "dicom").glob("*.dcm"))[0].read_bytes()
        verdict = otto.post("/api/v1/rules/dry-run", files={"file": ("x.dcm", header)}).json()
        assert verdict["process"] is True and verdict["kind"] == "psir"
        assert "matches" in verdict["reason"] and "slice positions" in verdict["note"]
        junk = otto.post("/api/v1/rules/dry-run", files={"file": ("x.dcm", b"not dicom")})
        assert junk.status_code == 422
        held = otto.get(f"/api/v1/series/{series}/dry-run").json()
        assert held["process"] is True and held["series_uid"] == series


def test_summary_and_lists_stay_consistent_with_the_index(site, processed) -> None:
    node, _ = site
    with client(node, "vera") as vera:
        t0 = time.perf_counter()
        first = vera.get("/api/v1/series", params={"limit": 1}).json()
        assert time.perf_counter() - t0 < 30  # a liveness bound, not a benchmark
        total = node.query("SELECT count(*) FROM series WHERE origin = 'received'")[0][0]
        assert first["total"] == total and len(first["items"]) == 1
        jobs = vera.get("/api/v1/jobs", params={"state": "done"}).json()
        assert jobs["total"] == node.query("SELECT count(*) FROM jobs WHERE state='done'")[0][0]
        assert vera.get("/api/v1/series", params={"state": "bogus"}).status_code == 422


def test_lge_node_status_reads_a_running_node_through_the_api(site, processed) -> None:
    """``lge-node status --url`` (token from LGE_NODE_TOKEN) shows what the index holds,
    as ``--config`` does from the database; without a token it says what is missing."""
    import json
    import os
    import subprocess
    import sys

    from tests.node_harness import ROOT

    node, _ = site
    _, series = processed

    def status(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "LGE_NODE_TOKEN"}
        if token:
            env["LGE_NODE_TOKEN"] = token
        return subprocess.run(
            [sys.executable, "-m", "node.cli", "status", *args], cwd=ROOT, env=env,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    via_api = status("--url", node.http_url, "--json")
    assert via_api.returncode == 0, via_api.stderr
    via_db = status("--config", str(node.config_path), "--json", token=None)
    api_doc, db_doc = json.loads(via_api.stdout), json.loads(via_db.stdout)
    row = next(r for r in api_doc["series"] if r["series_uid"] == series)
    assert row["state"] == "done" and row["calling_ae"] == "SCANNER"
    assert [r["series_uid"] for r in api_doc["series"]] == [
        r["series_uid"] for r in db_doc["series"]
    ]
    tables = status("--url", node.http_url)
    assert tables.returncode == 0 and series[-20:] in tables.stdout
    refused = status("--url", node.http_url, token=None)
    assert refused.returncode != 0 and "401" in refused.stderr
    assert "LGE_NODE_TOKEN" in refused.stderr
