"""Scheduled polling of a PACS: new MR studies are found by C-FIND and their LGE series
fetched (`node.retrieve`). The schedule lives in an apscheduler job store in the node's
database, and every study handled is a `PolledStudy` row, so a restart neither loses the
schedule nor fetches a study twice."""

from __future__ import annotations

import datetime as dt
import logging
import re

from pydicom.dataset import Dataset

from node.config import Config, Pacs
from node.dimse.retrieve import RetrieveError, fetch, find, pacs_named, plan, record_outcome
from node.events import Event, notify
from node.logs import event
from node.store.repository import Repository

log = logging.getLogger("node.poller")

# Set by the running node: apscheduler's persistent store keeps only the job's
# function reference and arguments (the PACS name), not the config object.
_CONTEXT: dict[str, object] = {}


def bind(config: Config, repository: Repository) -> None:
    _CONTEXT.update(config=config, repository=repository)


def poll(pacs_name: str) -> int:
    """One poll of ``pacs_name``; returns the number of studies fetched."""
    config, index = _CONTEXT.get("config"), _CONTEXT.get("repository")
    if not isinstance(config, Config) or not isinstance(index, Repository):
        return 0
    try:
        pacs = pacs_named(config, pacs_name)
    except RetrieveError:
        return 0  # a job left in the store for a PACS since removed (the node drops it)
    try:
        return _poll(config, index, pacs)
    except RetrieveError as exc:
        notify(index, Event.POLL_FAILED, f"{pacs.name}: {exc}", peer_ae=pacs.ae_title)
        return 0


def _poll(config: Config, index: Repository, pacs: Pacs) -> int:
    since = (dt.date.today() - dt.timedelta(days=pacs.poll_days)).strftime("%Y%m%d")
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = ""
    q.StudyDate = f"{since}-"
    q.ModalitiesInStudy = "MR"
    q.StudyDescription = ""
    studies = find(config, pacs, q)
    seen = index.polled_studies(pacs.name)
    pattern = re.compile(pacs.poll_description, re.I) if pacs.poll_description else None
    fetched = 0
    for st in studies:
        uid = str(st.StudyInstanceUID)
        if uid in seen:
            continue
        if pattern and not pattern.search(str(st.get("StudyDescription", ""))):
            _mark(index, pacs, uid, "study description does not match poll_description")
            continue
        plans = plan(config, pacs, study=uid)
        chosen = [sp for p in plans for sp in p.series if sp.process]
        if chosen:
            fetch(config, pacs, plans)
            fetched += 1
        failed = record_outcome(index, pacs, plans)
        outcome = (f"fetched {len(chosen)} LGE series" if chosen else "no LGE series") + (
            f"; {len(failed)} incomplete" if failed else ""
        )
        _mark(index, pacs, uid, outcome)
        event(log, "study_polled", pacs=pacs.name, study=uid, outcome=outcome)
    return fetched


def _mark(index: Repository, pacs: Pacs, study_uid: str, outcome: str) -> None:
    index.mark_polled(pacs.name, study_uid, outcome)
