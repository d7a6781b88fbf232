"""The operator's web console in a real browser (Debian chromium driven by Playwright):
log in, see a study arrive after a storescu send, open it, re-run it, find the action in
the audit trail; a viewer cannot act or read the audit, and nobody unauthenticated gets
past the login."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from node.http.auth import hash_password
from tests.node_harness import NodeProcess, copy_study, storescu
from tests.orthanc import free_port
from tests.system import requires
from tests.viewer_harness import CHROMIUM

pytestmark = [
    pytest.mark.timeout(600),
    requires(None if Path(CHROMIUM).is_file() else "chromium is not installed", "browser tests"),
]
PASSWORDS = {"ada": "admin-pass-1", "vera": "viewer-pass-1"}
ROLES = {"ada": "admin", "vera": "viewer"}
SHOTS = os.environ.get("LGE_NODE_SCREENSHOTS")  # a folder: save the README's screenshots


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    users = [
        {"name": n, "role": ROLES[n], "password_hash": hash_password(p)}
        for n, p in PASSWORDS.items()
    ]
    work = tmp_path_factory.mktemp("console-browser")
    with NodeProcess(work / "node", http={"port": free_port(), "users": users}) as n:
        yield n


def _login(browser, node: NodeProcess, user: str, start: str = "/"):
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(node.http_url + start)
    assert "/login" in page.url  # no session yet: the login page, keeping where to go
    page.fill("#username", user)
    page.fill("#password", PASSWORDS[user])
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert page.get_by_test_id("who").inner_text() == f"{user} ({ROLES[user]})"
    return page


def _reload_until(page, predicate, seconds: float, what: str) -> None:
    for _ in range(int(seconds)):
        if predicate():
            return
        page.wait_for_timeout(1000)
        page.reload()
    raise AssertionError(f"not seen within {seconds:.0f} s: {what}")


def test_an_admin_sees_a_study_arrive_opens_it_reruns_it_and_finds_the_audit_entry(
    node, browser, phantom_factory, tmp_path: Path
) -> None:
    page = _login(browser, node, "ada")
    case = phantom_factory(seed=7, kind="psir")
    _, series, files = copy_study(case.out_dir / "dicom", tmp_path / "study")
    storescu(node.port, files)
    row = page.get_by_test_id("series-table").locator("tr", has_text=series)
    _reload_until(page, lambda: row.count() == 1 and "done" in row.inner_text(), 120,
                  "the series listed as done on the dashboard")  # fmt: skip
    assert "LGE PSIR SAX" in row.inner_text() and "SCANNER" in row.inner_text()
    assert int(page.get_by_test_id("count-done").inner_text()) >= 1
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / "console_dashboard.png"), full_page=True)

    row.get_by_role("link").click()
    page.wait_for_load_state()
    assert page.get_by_test_id("series-state").inner_text() == "done"
    metrics = page.get_by_test_id("metrics").inner_text()
    assert re.search(r"LV myocardium\s+\d+\.\d ml", metrics)
    summary = page.locator("img.summary-img")
    summary.wait_for()
    page.wait_for_function("document.querySelector('img.summary-img').naturalWidth > 0")
    assert page.locator(".strip img").count() == len(files)  # one overlay per slice
    page.wait_for_function(
        "[...document.querySelectorAll('.strip img')].every(i => i.complete && i.naturalWidth)"
    )
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / "console_series.png"), full_page=True)

    page.get_by_test_id("rerun").click()
    page.wait_for_load_state()
    notice = page.get_by_test_id("notice").inner_text()
    job = int(re.search(r"job (\d+) queued", notice).group(1))
    jobs = page.locator("table", has_text="attempts").locator("tr", has_text="done")
    _reload_until(page, lambda: jobs.count() == 2, 120, f"job {job} done on the series page")

    page.goto(node.http_url + "/audit")
    audit = page.get_by_test_id("audit").inner_text()
    assert re.search(rf"ada\s+admin\s+rerun\s+{re.escape(series)}\s+ok", audit)
    assert re.search(r"ada\s+admin\s+login", audit)


def test_a_viewer_cannot_act_or_read_the_audit_and_strangers_meet_the_login(node, browser) -> None:
    page = _login(browser, node, "vera", start="/series")
    assert page.url.endswith("/series")  # back where the login was asked for
    link = page.get_by_test_id("series-table").get_by_role("link").first
    link.wait_for()
    series = link.inner_text()
    link.click()
    page.wait_for_load_state()
    assert page.get_by_test_id("rerun").count() == 0  # no action offered to a viewer
    forced = page.request.post(
        f"{node.http_url}/series/{series}/rerun", headers={"Origin": node.http_url},
        max_redirects=0,
    )  # fmt: skip
    assert forced.status == 403
    page.goto(node.http_url + "/audit")
    assert "needs the admin role" in page.get_by_test_id("refused").inner_text()

    stranger = browser.new_context().new_page()
    stranger.goto(node.http_url + "/audit")
    assert "/login" in stranger.url
    assert stranger.request.get(node.http_url + "/api/v1/series").status == 401
    stranger.fill("#username", "vera")
    stranger.fill("#password", "wrong")
    stranger.click("button[type=submit]")
    assert "Wrong name or password" in stranger.get_by_test_id("login-error").inner_text()
    # a form posted from another site is refused even with a valid session
    admin = _login(browser, node, "ada")
    cross = admin.request.post(
        f"{node.http_url}/series/{series}/rerun", headers={"Origin": "http://evil.example"},
        max_redirects=0,
    )  # fmt: skip
    assert cross.status == 403
