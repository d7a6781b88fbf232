"""C-FIND matching keys, parsed once (PS3.4 C.2.2.2): the repository renders a key as
SQL to narrow the candidates, and the Q/R SCP tests each candidate with the DICOM rule;
both read the same parse, so the two can never disagree."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.instance import listed

Kind = Literal["list", "range", "wild", "exact"]


@dataclass(frozen=True)
class KeyMatch:
    kind: Kind
    values: tuple[str, ...]  # list: the values; range: (low, high); wild, exact: (text,)

    @classmethod
    def parse(cls, pattern: Any, ranged: bool) -> KeyMatch | None:
        """None for universal matching (empty); a UID list (backslash separated or
        multi-valued), a range ``A-B`` (open ends allowed) for dates and times, * and ?
        wildcards, or single value matching."""
        if pattern is None or pattern == "":
            return None
        values = listed(pattern)
        text = str(pattern)
        if values is None and "\\" in text:
            values = text.split("\\")
        if values is not None:
            return cls("list", tuple(values))
        if ranged and "-" in text:
            low, high = text.split("-", 1)
            return cls("range", (low, high))
        if "*" in text or "?" in text:
            return cls("wild", (text,))
        return cls("exact", (text,))

    def test(self, value: str) -> bool:
        if self.kind == "list":
            return value in self.values
        if self.kind == "range":
            low, high = self.values
            return (not low or value >= low) and (not high or value <= high)
        if self.kind == "wild":
            return fnmatch.fnmatchcase(value.upper(), self.values[0].upper())
        return value == self.values[0]


@dataclass(frozen=True)
class Query:
    """A parsed identifier: keyword → match, and the ModalitiesInStudy values."""

    criteria: dict[str, KeyMatch]
    modalities: list[str]
    # Only studies that a series received from one of these AE titles belongs to (the
    # peer's access scope); None: every study.
    senders: frozenset[str] | None = None
