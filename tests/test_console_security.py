"""The console over HTTPS, guessing passwords, and configuration changes: a node serving
its console with a certificate (made by openssl here), the login throttle in front of
every password check (console form, API login, HTTP Basic), and the audit row a changed
configuration leaves when the node starts with it."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from node.http.auth import hash_password
from tests.node_harness import NodeProcess, write_toml
from tests.system import requires

pytestmark = [
    pytest.mark.timeout(300),
    requires(None if shutil.which("openssl") else "openssl is not installed", "HTTPS tests"),
]
WINDOW_S = 4.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("https")
    cert, key = work / "console.crt", work / "console.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    users = [{"name": "ada", "role": "admin", "password_hash": hash_password("admin-pass-1")}]
    http = {"users": users, "certificate": str(cert), "private_key": str(key),
            "login_max_failures": 3, "login_block_minutes": WINDOW_S / 60}  # fmt: skip
    with NodeProcess(work / "node", http=http, wait_models=False) as running:
        url = running.http_url.replace("http://", "https://")
        trust = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=url, verify=trust, timeout=30) as client:
            running.wait_for(lambda: _up(client), 30, "the HTTPS console")
            yield running, client


def _up(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def test_the_console_serves_https_with_secure_cookies(node) -> None:
    running, client = node
    login = client.post("/api/v1/login", data={"username": "ada", "password": "admin-pass-1"})
    assert login.status_code == 200
    cookie = login.headers["set-cookie"].lower()
    assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert client.get("/api/v1/me").json()["name"] == "ada"
    with pytest.raises(httpx.HTTPError):  # plain HTTP on the same port gets nowhere
        httpx.get(running.http_url + "/healthz", timeout=5).raise_for_status()
    with pytest.raises(httpx.ConnectError):  # nor a client that does not trust the cert
        httpx.get(str(client.base_url) + "/healthz", timeout=5)


def test_guessing_passwords_is_throttled_by_name_and_address(node) -> None:
    _, client = node
    wrong = {"username": "ada", "password": "guess"}
    for _ in range(3):
        assert client.post("/api/v1/login", data=wrong).status_code == 401
    # Now even the right password waits: the window is per name (and per address).
    blocked = client.post("/api/v1/login", data={"username": "ada", "password": "admin-pass-1"})
    assert blocked.status_code == 429 and "too many failed logins" in blocked.json()["detail"]
    basic = client.get("/api/v1/me", auth=("ada", "admin-pass-1"))
    assert basic.status_code == 429
    page = client.post("/login", data={"username": "ada", "password": "admin-pass-1"},
                       headers={"Origin": str(client.base_url)})  # fmt: skip
    assert page.status_code == 429 and "too many failed logins" in page.text
    time.sleep(WINDOW_S + 0.5)
    ok = client.post("/api/v1/login", data={"username": "ada", "password": "admin-pass-1"})
    assert ok.status_code == 200
    client.cookies.clear()
    audit = client.get("/api/v1/audit", auth=("ada", "admin-pass-1")).json()["items"]
    refused = [a for a in audit if a["action"] == "login" and a["outcome"] == "refused"]
    assert any("too many failed logins" in a["detail"] for a in refused)
    assert sum(a["detail"] == "wrong name or password" for a in refused) >= 3


def test_a_changed_configuration_is_audited_with_what_changed(tmp_path: Path) -> None:
    users = [{"name": "ada", "role": "admin", "password_hash": hash_password("first-pass-1")}]
    node = NodeProcess(tmp_path / "node", http={"users": users}, wait_models=False)

    def restart(**change: object) -> list[tuple]:
        doc = tomllib.loads(node.config_path.read_text())
        for key, value in change.items():
            section, _, name = key.partition("__")
            if name:
                doc[section][name] = value
            else:
                doc[section] = value
        write_toml(node.config_path, doc)
        node.start(wait_models=False)
        node.stop()
        return node.query("SELECT user, detail FROM audit WHERE action = 'config' ORDER BY id")

    assert restart() == [("lge-node", "first start")]
    assert len(restart()) == 1  # the same configuration again: nothing to record
    destination = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}]
    rows = restart(http__session_hours=2.0, destinations=destination)
    assert rows[-1] == ("lge-node", "changed: destinations, http.session_hours")
    new_hash = hash_password("second-pass-2")
    rows = restart(http__users=[{**users[0], "password_hash": new_hash}])
    assert rows[-1] == ("lge-node", "changed: http.users")
    applied = (node.data_dir / "config.applied.json").read_text()
    assert new_hash not in applied and users[0]["password_hash"] not in applied
