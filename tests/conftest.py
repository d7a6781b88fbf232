"""Shared fixtures: phantom studies are generated once per session (a few seconds each)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.research.phantom import PhantomCase, PhantomSpec, make_phantom

# Tests that load the machine on purpose (hostile peers, fuzzing, memory peaks) share one
# xdist worker, so they neither run beside each other nor skew each other's bounds.
SERIAL_GROUP = {"test_node_hostile", "test_fuzz", "test_resources"}
# The browser tests run one after the other too: two headless chromiums rendering WebGL in
# software beside each other starve OHIF past its load timeouts on two cores.
BROWSER_GROUP = {"test_viewer", "test_console_browser"}


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Each test file on one worker (its module fixtures start once), the SERIAL_GROUP
    files together on one, the BROWSER_GROUP files together on one. (xdist's own --dist
    loadgroup ignores the marks here.)"""
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            stem = Path(module).stem
            if stem in SERIAL_GROUP:
                return "serial"
            return "browser" if stem in BROWSER_GROUP else module

    return FileScheduling(config, log)


@pytest.fixture(scope="session")
def phantom_factory(tmp_path_factory: pytest.TempPathFactory):
    cache: dict[PhantomSpec, PhantomCase] = {}

    def make(**kwargs) -> PhantomCase:
        spec = PhantomSpec(**kwargs)
        if spec not in cache:
            out = tmp_path_factory.mktemp(f"phantom_{spec.seed}_{spec.kind}")
            cache[spec] = make_phantom(out, spec)
        return cache[spec]

    return make


@pytest.fixture(scope="session")
def psir_classic(phantom_factory) -> PhantomCase:
    """Seed 7 has an infarct with MVO (checked in test_phantom)."""
    return phantom_factory(seed=7, kind="psir")


@pytest.fixture(scope="session")
def magnitude_enhanced(phantom_factory) -> PhantomCase:
    return phantom_factory(seed=11, kind="magnitude", enhanced=True, mvo=True)


@pytest.fixture()
def series_dir(psir_classic: PhantomCase) -> Path:
    return psir_classic.out_dir / "dicom"


@pytest.fixture(scope="module")
def browser():
    """Debian chromium driven by Playwright (never a downloaded browser), headless, with
    software WebGL; one per test module."""
    from playwright.sync_api import sync_playwright

    from tests.viewer_harness import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory):
    """A throw-away PostgreSQL server (tests/postgres.py) for the module; in CI it must be
    installed (scripts/setup-system), elsewhere its tests are skipped without it."""
    from tests.postgres import Postgres, pg_bin
    from tests.system import check

    missing = None if pg_bin() else "PostgreSQL is not installed (scripts/setup-system)"
    if check(missing, "PostgreSQL tests"):
        pytest.skip(missing)
    with Postgres(tmp_path_factory.mktemp("pg")) as server:
        yield server
