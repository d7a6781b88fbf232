"""Which series are LGE: rules from ``[selection]`` applied to what the headers say.

Works on `SeriesFacts`, which the index fills from received instances and which a
C-FIND response can fill too (then without per-frame inversion times), so pushed and
pulled studies are judged by the same rules. Every decision carries its reason.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from pydicom.uid import EnhancedMRImageStorage, MRImageStorage

from node.config import SelectionSection

MR_CLASSES = {MRImageStorage, EnhancedMRImageStorage}


@dataclass(frozen=True)
class SeriesFacts:
    series_uid: str
    modality: str
    description: str
    sop_class_uid: str | None = None  # None: unknown (C-FIND without it)
    image_type: str = ""  # backslash-separated values
    scanning_sequence: str = ""
    series_number: int | None = None
    # (position key, inversion time) per frame; None when not known (C-FIND level).
    frames: list[tuple[str | None, float | None]] | None = None
    n_instances: int | None = None
    forced: bool = False


@dataclass(frozen=True)
class Decision:
    process: bool
    kind: str  # psir | magnitude | "" (not an LGE series)
    reason: str


@dataclass
class _Rules:
    include: list[re.Pattern[str]] = field(default_factory=list)
    exclude: list[re.Pattern[str]] = field(default_factory=list)


def _compile(cfg: SelectionSection) -> _Rules:
    return _Rules(
        [re.compile(p, re.IGNORECASE) for p in cfg.include],
        [re.compile(p, re.IGNORECASE) for p in cfg.exclude],
    )


def reconstruction(facts: SeriesFacts) -> str:
    """``psir`` for a phase-sensitive (signed) reconstruction, else ``magnitude``."""
    tokens = {t.strip().upper() for t in facts.image_type.split("\\")}
    if "PSIR" in tokens or re.search(r"psir|phase[ _.-]*sens", facts.description, re.I):
        return "psir"
    return "magnitude"


def judge(facts: SeriesFacts, cfg: SelectionSection) -> Decision:
    """Is this one series an LGE series the pipeline should process?"""
    rules = _compile(cfg)
    kind = reconstruction(facts)
    if facts.modality and facts.modality.upper() != "MR":
        return Decision(False, "", f"modality {facts.modality} is not MR")
    if facts.sop_class_uid is not None and facts.sop_class_uid not in MR_CLASSES:
        return Decision(False, "", f"SOP class {facts.sop_class_uid} is not an MR image")
    if facts.forced:
        return Decision(True, kind, "sent to the node's force AE title: processed regardless")
    desc = facts.description or ""
    for pattern in rules.exclude:
        if pattern.search(desc):
            return Decision(
                False, "", f"description {desc!r} matches exclude pattern /{pattern.pattern}/"
            )
    positions: dict[str | None, set[float]] = defaultdict(set)
    if facts.frames is not None:
        for pos, ti in facts.frames:
            if ti is not None:
                positions[pos].add(round(ti, 1))
            else:
                positions.setdefault(pos, set())
        most = max((len(t) for t in positions.values()), default=0)
        if most > 1:
            return Decision(False, "", f"{most} inversion times at one slice position: a TI scout")
        n_positions = len(positions)
        if n_positions < cfg.min_slices:
            return Decision(
                False,
                "",
                f"{n_positions} slice position(s), fewer than selection.min_slices "
                f"= {cfg.min_slices}: not a short-axis stack",
            )
    for pattern in rules.include:
        if pattern.search(desc):
            return Decision(True, kind, f"description {desc!r} matches /{pattern.pattern}/")
    inversion_recovery = "IR" in facts.scanning_sequence.upper().split("\\")
    timed = bool(facts.frames) and all(ti is not None for _, ti in facts.frames or [])
    if cfg.use_inversion_time and inversion_recovery and timed:
        return Decision(True, kind, "inversion-recovery stack with one TI per position")
    return Decision(
        False, "", f"description {desc!r} matches no include pattern and no single-TI IR stack"
    )


def _positions(facts: SeriesFacts) -> frozenset[str | None]:
    return frozenset(pos for pos, _ in facts.frames or [])


def choose(series: list[SeriesFacts], cfg: SelectionSection) -> dict[str, Decision]:
    """Decisions for all series of one study, PSIR/magnitude preference applied.

    A magnitude and a PSIR series are two reconstructions of one acquisition when they
    cover the same slice positions (or, without positions, share the series number
    family: Siemens numbers them N and N+1).
    """
    decisions = {f.series_uid: judge(f, cfg) for f in series}
    if cfg.prefer == "both":
        return decisions
    lge = [f for f in series if decisions[f.series_uid].process and not f.forced]
    keep, drop = ("psir", "magnitude") if cfg.prefer == "psir" else ("magnitude", "psir")
    kept = [f for f in lge if decisions[f.series_uid].kind == keep]
    for f in lge:
        if decisions[f.series_uid].kind != drop:
            continue
        for other in kept:
            if _same_acquisition(f, other):
                decisions[f.series_uid] = Decision(
                    False,
                    drop,
                    f"{drop} reconstruction of series {other.series_number or other.series_uid};"
                    f" {keep} preferred (selection.prefer)",
                )
                break
    return decisions


def _same_acquisition(a: SeriesFacts, b: SeriesFacts) -> bool:
    pa, pb = _positions(a), _positions(b)
    if pa and pb and None not in pa and None not in pb:
        return pa == pb
    if a.series_number is not None and b.series_number is not None:
        return abs(a.series_number - b.series_number) <= 1
    return True  # nothing tells them apart: treat as one acquisition
