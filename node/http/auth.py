"""Who is asking: console users (argon2id password hashes in the config), API tokens
(their SHA-256 in the config), and the signed session cookie a login sets.

Roles nest: a viewer reads, an operator also acts (re-run, re-send, retry), an admin also
sees the configuration and the audit trail.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer

from node.config import ConsoleToken, ConsoleUser, HttpSection

RANK = {"viewer": 1, "operator": 2, "admin": 3}
COOKIE = "lge_node_session"

_hasher = PasswordHasher()
# Verified against when the user is unknown, so a wrong name costs what a wrong password
# costs (no user enumeration by timing).
_DUMMY = _hasher.hash(secrets.token_hex(16))


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    via: str  # password | token | session
    sender: str = ""  # the AE title what it stores over STOW-RS is recorded as

    def may(self, role: str) -> bool:
        return RANK[self.role] >= RANK[role]


def hash_password(password: str) -> str:
    """An argon2id hash for ``http.users[].password_hash``."""
    return _hasher.hash(password)


def new_token() -> tuple[str, str]:
    """(token to hand out, its SHA-256 for ``http.tokens[].sha256``)."""
    token = secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode()).hexdigest()


class Throttled(Exception):
    """Too many failed logins for a name or from an address; the message says until when."""


class LoginThrottle:
    """Refuses password checks for a name, or from an address, that failed
    ``max_failures`` times within ``window_s`` - until the oldest of those failures is
    ``window_s`` old. Guessing costs a blocked window per ``max_failures`` tries."""

    def __init__(self, max_failures: int, window_s: float) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures[key]
        while times and now - times[0] > self.window_s:
            times.popleft()
        return times

    def check(self, name: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key, what in ((f"u:{name}", f"user {name!r}"), (f"a:{address}", address)):
                times = self._recent(key, now)
                if len(times) >= self.max_failures:
                    wait = self.window_s - (now - times[0])
                    raise Throttled(f"too many failed logins for {what}: try again in {wait:.0f} s")

    def failed(self, name: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in (f"u:{name}", f"a:{address}"):
                self._recent(key, now).append(now)
            if len(self._failures) > 10_000:  # forget idle keys; a flood costs no memory
                for key in [k for k, t in self._failures.items() if not self._recent(k, now)]:
                    del self._failures[key]


def _sender(entry: ConsoleUser | ConsoleToken) -> str:
    return entry.ae_title or entry.name[:16]


class Authenticator:
    def __init__(self, config: HttpSection, secret: bytes) -> None:
        self.users = {u.name: u for u in config.users}
        self.tokens = [(t.sha256, t) for t in config.tokens]
        self.max_age_s = int(config.session_hours * 3600)
        self.throttle = LoginThrottle(config.login_max_failures, config.login_block_minutes * 60)
        self._cookies = URLSafeTimedSerializer(secret, salt="lge-node-session")

    def password(self, name: str, password: str, address: str = "") -> Principal | None:
        """The user, or None for a wrong name or password; raises `Throttled`."""
        self.throttle.check(name, address)
        user = self.users.get(name)
        try:
            _hasher.verify(user.password_hash if user else _DUMMY, password)
        except (VerificationError, InvalidHashError):
            self.throttle.failed(name, address)
            return None
        return Principal(user.name, user.role, "password", _sender(user)) if user else None

    def token(self, token: str) -> Principal | None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        for known, entry in self.tokens:
            if hmac.compare_digest(known, digest):
                return Principal(entry.name, entry.role, "token", _sender(entry))
        return None

    def cookie_for(self, principal: Principal) -> str:
        return self._cookies.dumps({"u": principal.name})

    def session(self, cookie: str) -> Principal | None:
        """The user of a valid, unexpired cookie, with the role the config gives now
        (a user removed or demoted loses the old rights at once)."""
        try:
            data = self._cookies.loads(cookie, max_age=self.max_age_s)
        except BadSignature:
            return None
        user = self.users.get(str(data.get("u", "")))
        return Principal(user.name, user.role, "session", _sender(user)) if user else None
