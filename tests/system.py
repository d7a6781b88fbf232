"""System parts the tests need (Debian packages, OHIF's dist): a developer without one
gets a skip naming what to install; CI, where scripts/setup-system installs them all,
gets an error instead - a missing part must never turn tests into silent skips there."""

from __future__ import annotations

import os

import pytest


def check(missing: str | None, what: str) -> str | None:
    """``missing`` (None when all is there), after refusing it in CI."""
    if missing and os.environ.get("CI"):
        raise RuntimeError(f"{what} cannot run in CI: {missing} (scripts/setup-system)")
    return missing


def requires(missing: str | None, what: str) -> pytest.MarkDecorator:
    """A skip mark for ``what`` when ``missing`` says a part is not installed."""
    return pytest.mark.skipif(check(missing, what) is not None, reason=missing or "")
