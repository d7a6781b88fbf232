"""Labelled LGE studies from elsewhere, as training data: ``lge-node dataset import``.

Three ways in, one way out:

- the **EMIDEC** layout (``Case_X/Images/Case_X.nii.gz`` + ``Case_X/Contours/Case_X.nii.gz``;
  labels 0 background, 1 cavity, 2 myocardium, 3 infarct, 4 no-reflow: ours already);
- **any NIfTI image/label pairs** (``X.nii.gz`` or ``X_0000.nii.gz`` beside ``X.nii.gz``
  in a labels folder), with a label map from their values to ours;
- **DICOM series with DICOM SEG** objects on them (a folder: exported from a PACS, or
  the node's own ``instances/`` with the reader-edited SEGs the correction loop kept),
  segments matched by their coded concept (the SEG reader is the outputs layer's,
  `dicom_templates.seg.read_seg_masks`, handed in by the caller: the pipeline does not
  depend on that layer).

Every case is checked before anything is written (image and labels on the same grid,
label values the map knows, a labelled myocardium, sizes a heart can have); all problems
are reported together, by case. What is written: an nnU-Net raw dataset of heart-region
crops (``nnunet/``: ``imagesTr``, ``labelsTr``, ``dataset.json``, ``splits_final.json``),
a YOLO detection set (``yolo/``), the whole stacks with their labels (``volumes/``: what
``lge-node evaluate --dataset`` runs the whole pipeline on), ``summary.json`` and
``dataset_card.json`` (source, licence, label map, an import id that a model trained on
it records). The same writers as the phantom training set (`pipeline.research.
dataset`), so imported cases, phantoms and readers' corrections train together.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from pipeline.labels import Label
from pipeline.nnunet_raw import FILE_ENDING, LABELS, write_dataset_json
from pipeline.volume import Geometry, Volume

MAX_MATRIX = 1024
MAX_SLICES = 200
SPACING_MM = (0.2, 10.0)  # in-plane pixel spacing a cardiac MR can have
SLICE_SPACING_MM = (0.5, 30.0)
EMIDEC_MAP = {0: "background", 1: "lv_blood_pool", 2: "myocardium", 3: "scar", 4: "mvo"}
VOLUMES = "volumes"  # <dataset>/volumes/{images,labels}/<case>.nii.gz


class DatasetImportError(ValueError):
    """The source cannot be imported as it is; the message lists every problem."""


@dataclass(frozen=True)
class LoadedCase:
    """One labelled stack in the pipeline's conventions: (z, y, x), `Label` values."""

    case_id: str
    image: np.ndarray
    labels: np.ndarray
    geometry: Geometry
    source: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CaseSource:
    """A case not yet read: its id, where it is, and how to read it."""

    case_id: str
    where: str
    load: Callable[[], LoadedCase]


@dataclass
class CaseSummary:
    case_id: str
    source: str
    slices: int
    matrix: tuple[int, int]
    pixel_spacing_mm: tuple[float, float]
    slice_spacing_mm: float
    intensity_p1_p99: tuple[float, float]
    label_ml: dict[str, float]
    split: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class ImportSummary:
    format: str
    source: str
    licence: str
    label_map: dict[int, str]
    cases: list[CaseSummary]
    skipped: dict[str, str]
    folds: int
    out: str


# -- sources -------------------------------------------------------------------------------


def emidec_cases(root: Path) -> list[CaseSource]:
    """EMIDEC: one folder per case with ``Images/`` and ``Contours/``."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / "Images").is_dir())
    if not folders:
        raise DatasetImportError(
            f"{root}: no case folder with an Images/ subfolder (EMIDEC layout: "
            "Case_X/Images/Case_X.nii.gz and Case_X/Contours/Case_X.nii.gz)"
        )
    sources = []
    for folder in folders:
        image = _nifti_in(folder / "Images", folder.name)
        contours = _nifti_in(folder / "Contours", folder.name)
        sources.append(
            CaseSource(folder.name, str(folder), _nifti_loader(folder.name, image, contours,
                                                               EMIDEC_MAP))
        )  # fmt: skip
    return sources


def nifti_cases(images: Path, labels: Path, label_map: dict[int, str]) -> list[CaseSource]:
    """NIfTI pairs: ``X.nii.gz`` (or nnU-Net's ``X_0000.nii.gz``) and ``labels/X.nii.gz``."""
    files = sorted(p for p in images.iterdir() if p.name.endswith((".nii.gz", ".nii")))
    if not files:
        raise DatasetImportError(f"{images}: no .nii.gz or .nii images")
    sources = []
    for path in files:
        stem = _stem(path)
        case = stem[:-5] if stem.endswith("_0000") else stem
        label_path = _nifti_in(labels, case)
        sources.append(CaseSource(case, str(path), _nifti_loader(case, path, label_path,
                                                                 label_map)))  # fmt: skip
    return sources


SegReader = Callable[[Dataset, Volume], np.ndarray]


def dicom_seg_cases(
    folder: Path, read_masks: SegReader, accept_automatic: bool = False
) -> tuple[list[CaseSource], dict[str, str]]:
    """Every DICOM SEG under ``folder`` whose images are there too, one case per SEG
    (the newest SEG of a series wins: a reader's later edit replaces the earlier), and
    the files left out, with why (unreadable, automatic SEGs). ``read_masks``: (SEG,
    volume) -> (z, y, x, 5) masks of myocardium, infarct, MVO, LV and RV blood pool.

    A SEG whose every segment is AUTOMATIC is a model's output (the node's own results
    routed back, another vendor's AI), not a reference: left out unless
    ``accept_automatic``. A reader's edit is MANUAL or SEMIAUTOMATIC."""
    import pydicom
    from pydicom.uid import SegmentationStorage

    from pipeline.series import dicom_files

    paths = dicom_files(folder)
    if not paths:
        raise DatasetImportError(f"{folder}: no DICOM files")
    series: dict[str, list[Path]] = {}
    segs: dict[str, tuple[str, Path]] = {}  # source series -> (content date/time, SEG)
    ignored: dict[str, str] = {}
    for path in paths:
        # Headers only: an archive is read whole before any case is, and a stray file
        # (a README in an export, a cut-off transfer) is named, not fatal.
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            ds.SeriesInstanceUID  # noqa: B018 - every usable object has one
        except Exception as exc:  # pydicom raises many kinds for broken files
            ignored[str(path)] = f"not a readable DICOM object ({type(exc).__name__}: {exc})"
            continue
        if ds.get("SOPClassUID") == SegmentationStorage:
            refs = ds.get("ReferencedSeriesSequence") or []
            kinds = {str(s.get("SegmentAlgorithmType", "")) for s in ds.get("SegmentSequence", [])}
            if kinds == {"AUTOMATIC"} and not accept_automatic:
                algorithm = next(
                    (str(s.get("SegmentAlgorithmName", "")) for s in ds.SegmentSequence), ""
                )
                ignored[str(path)] = (
                    f"an automatic segmentation ({algorithm or 'unnamed algorithm'}), not a "
                    "reference (--accept-automatic to use it)"
                )
            elif refs:
                source = str(refs[0].SeriesInstanceUID)
                when = f"{ds.get('ContentDate', '')}{ds.get('ContentTime', '')}"
                if source not in segs or when >= segs[source][0]:
                    segs[source] = (when, path)
        elif "Rows" in ds:
            series.setdefault(str(ds.SeriesInstanceUID), []).append(path)
    if not segs:
        left = (
            f" ({len(ignored)} files left out, e.g. {next(iter(ignored.values()))})"
            if ignored
            else ""
        )
        raise DatasetImportError(f"{folder}: no DICOM SEG objects to learn from{left}")
    sources = []
    for number, (source_uid, (_, seg_path)) in enumerate(sorted(segs.items()), start=1):
        case = f"SEG_{number:04d}"
        sources.append(
            CaseSource(case, str(seg_path), _seg_loader(case, seg_path, source_uid,
                                                        series.get(source_uid, []), read_masks))
        )  # fmt: skip
    return sources, ignored


def parse_label_map(text: str) -> dict[int, str]:
    """``"0:background,1:lv_blood_pool,2:myocardium,3:scar,4:mvo"`` (names of our labels;
    ``ignore`` for a value to read as background)."""
    mapping: dict[int, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        value, _, name = part.partition(":")
        try:
            number = int(value)
        except ValueError:
            raise DatasetImportError(
                f"label map entry {part!r}: {value!r} is not a number"
            ) from None
        if name not in LABELS and name != "ignore":
            raise DatasetImportError(
                f"label map entry {part!r}: {name!r} is none of {', '.join(LABELS)}, ignore"
            )
        mapping[number] = name
    if not any(n == "myocardium" for n in mapping.values()):
        raise DatasetImportError("the label map names no myocardium label")
    return mapping


# -- readers -------------------------------------------------------------------------------


def _stem(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".nii")


def _nifti_in(folder: Path, case: str) -> Path:
    for name in (f"{case}.nii.gz", f"{case}.nii"):
        if (folder / name).is_file():
            return folder / name
    return folder / f"{case}.nii.gz"  # missing: the loader says so


def _read_nifti(path: Path) -> tuple[np.ndarray, Geometry]:
    import SimpleITK as sitk

    if not path.is_file():
        raise ValueError(f"{path.name} is missing")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1]
        raise ValueError(f"{path.name} cannot be read: {reason}") from None
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"{path.name} is {image.GetDimension()}-D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s); one 3-D stack expected"
        )
    return sitk.GetArrayFromImage(image), Geometry.from_sitk(image)


def _nifti_loader(
    case: str, image_path: Path, label_path: Path, label_map: dict[int, str]
) -> Callable[[], LoadedCase]:
    def load() -> LoadedCase:
        image, geometry = _read_nifti(image_path)
        raw, label_geometry = _read_nifti(label_path)
        mismatch = geometry.mismatch(label_geometry, tol_mm=1e-2)
        if mismatch:
            raise ValueError(f"labels are not on the image's grid: {mismatch}")
        labels = _map_labels(raw, label_map)
        return LoadedCase(case, image.astype(np.float32), labels, geometry, str(image_path))

    return load


def _map_labels(raw: np.ndarray, label_map: dict[int, str]) -> np.ndarray:
    if not np.issubdtype(raw.dtype, np.integer):
        if not np.all(np.mod(raw, 1) == 0):
            raise ValueError("label values are not whole numbers")
        raw = raw.astype(np.int64)
    values = {int(v) for v in np.unique(raw)}
    unknown = sorted(values - set(label_map))
    if unknown:
        raise ValueError(
            f"unknown label values {unknown} (the map knows {sorted(label_map)}; give "
            "--label-map, 'ignore' for values to drop)"
        )
    out = np.zeros(raw.shape, dtype=np.uint8)
    for value, name in label_map.items():
        if name not in ("background", "ignore"):
            out[raw == value] = LABELS[name]
    return out


def _seg_loader(
    case: str, seg_path: Path, source_uid: str, image_paths: list[Path], read_masks: SegReader
) -> Callable[[], LoadedCase]:
    def load() -> LoadedCase:
        import pydicom

        from pipeline.labels import compose
        from pipeline.series import load_series

        if not image_paths:
            raise ValueError(f"the images of series {source_uid} it segments are not there")
        volume = load_series(image_paths, source_uid)
        masks = read_masks(pydicom.dcmread(seg_path), volume)
        notes: tuple[str, ...] = ()
        pools = np.zeros(volume.array.shape, dtype=np.uint8)
        pools[masks[..., 4]] = Label.RV_BLOOD
        pools[masks[..., 3]] = Label.LV_BLOOD
        if not masks[..., 3].any():
            pools[_enclosed(masks[..., 0])] = Label.LV_BLOOD
            notes = ("LV blood pool: the area the myocardium encloses (no such segment)",)
        labels = compose(masks[..., 0], masks[..., 1], masks[..., 2], pools)
        return LoadedCase(
            case, volume.array.astype(np.float32), labels, volume.geometry,
            f"{seg_path} on series {source_uid}", notes,
        )  # fmt: skip

    return load


def _enclosed(myocardium: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_fill_holes

    return np.stack([binary_fill_holes(s) & ~s for s in myocardium])


# -- checks, summary, writing ------------------------------------------------------------


def check_case(case: LoadedCase) -> None:
    """ValueError naming what makes ``case`` unusable for training."""
    z, y, x = case.image.shape
    if case.labels.shape != case.image.shape:
        raise ValueError(f"labels {case.labels.shape} and image {case.image.shape} differ")
    if max(y, x) > MAX_MATRIX or z > MAX_SLICES or min(y, x) < 16:
        raise ValueError(f"size {x}x{y}x{z} is not a cardiac short-axis stack")
    if not np.isfinite(case.image).all():
        raise ValueError("the image holds NaN or infinite values")
    g = case.geometry
    if not all(SPACING_MM[0] <= s <= SPACING_MM[1] for s in g.pixel_spacing):
        raise ValueError(f"pixel spacing {g.pixel_spacing} mm is outside {SPACING_MM}")
    if z > 1 and not SLICE_SPACING_MM[0] <= g.slice_spacing <= SLICE_SPACING_MM[1]:
        raise ValueError(f"slice spacing {g.slice_spacing:.2f} mm is outside {SLICE_SPACING_MM}")
    myocardium = (case.labels >= Label.MYOCARDIUM) & (case.labels <= Label.MVO)
    if not myocardium.any():
        raise ValueError("no myocardium is labelled")


def summarize(case: LoadedCase) -> CaseSummary:
    ml = case.geometry.voxel_volume_ml
    names = {v: k for k, v in LABELS.items()}
    counts = np.bincount(case.labels.ravel(), minlength=len(LABELS))
    p1, p99 = np.percentile(case.image, [1, 99])
    return CaseSummary(
        case_id=case.case_id,
        source=case.source,
        slices=case.image.shape[0],
        matrix=(case.image.shape[2], case.image.shape[1]),
        pixel_spacing_mm=(
            round(case.geometry.pixel_spacing[0], 3),
            round(case.geometry.pixel_spacing[1], 3),
        ),
        slice_spacing_mm=round(case.geometry.slice_spacing, 3),
        intensity_p1_p99=(round(float(p1), 2), round(float(p99), 2)),
        label_ml={names[v]: round(float(counts[v]) * ml, 2) for v in range(1, len(LABELS))},
        notes=list(case.notes),
    )


def read_all(sources: list[CaseSource]) -> Iterator[tuple[CaseSource, LoadedCase | str]]:
    """Each source read and checked: the case, or why it cannot be used."""
    for source in sources:
        try:
            case = source.load()
            check_case(case)
        except Exception as exc:  # SimpleITK, pydicom, highdicom: name the case, go on
            yield (
                source,
                str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}",
            )
            continue
        yield source, case


def import_dataset(
    sources: list[CaseSource],
    out: Path,
    *,
    format: str,
    source: str,
    licence: str,
    label_map: dict[int, str],
    folds: int = 5,
    seed: int = 0,
    skip_invalid: bool = False,
    ignored: dict[str, str] | None = None,
    progress: Callable[[Iterator], Iterator] = lambda it: it,
) -> ImportSummary:
    """Check every case, then write the nnU-Net and YOLO sets into ``out``.

    DatasetImportError listing every problem, before anything is written, when a case
    cannot be used (unless ``skip_invalid``: those are left out and listed). ``ignored``:
    what the source reader left out, and why (listed with the skipped cases)."""
    from pipeline.research.dataset import export_nnunet_case, export_yolo_case, write_yolo_yaml

    ids = [s.case_id for s in sources]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise DatasetImportError(f"case ids occur more than once: {', '.join(repeated)}")
    problems: dict[str, str] = {}
    for src, result in progress(read_all(sources)):
        if isinstance(result, str):
            problems[src.case_id] = f"{src.where}: {result}"
    if problems and not skip_invalid:
        lines = "\n".join(f"  {case}: {why}" for case, why in problems.items())
        raise DatasetImportError(
            f"{len(problems)} of {len(sources)} cases cannot be imported "
            f"(nothing was written; --skip-invalid leaves them out):\n{lines}"
        )
    usable = [s for s in sources if s.case_id not in problems]
    if len(usable) < 2:
        raise DatasetImportError(f"{len(usable)} usable case(s): at least 2 are needed")

    staging = out.parent / f".{out.name}.importing"
    shutil.rmtree(staging, ignore_errors=True)
    raw, yolo = staging / "nnunet", staging / "yolo"
    splits = _splits([s.case_id for s in usable], folds, seed)
    validation = set(splits[0]["val"])
    rng = np.random.default_rng(seed)
    summaries = []
    for src in progress(iter(usable)):
        case = src.load()  # read again: one case in memory at a time
        split = "val" if case.case_id in validation else "train"
        export_nnunet_case(case.image, case.labels, case.geometry, case.case_id, raw, rng)
        export_yolo_case(case.image, case.labels, case.case_id,
                         yolo / "images" / split, yolo / "labels" / split)  # fmt: skip
        _write_volume(case, staging / VOLUMES)
        summary = summarize(case)
        summary.split = split
        summaries.append(summary)
    shutil.rmtree(raw / ".staging", ignore_errors=True)
    (raw / "splits_final.json").write_text(json.dumps(splits, indent=1) + "\n")
    write_dataset_json(raw, len(usable), f"imported from {format}: {source} (licence: {licence})")
    result = ImportSummary(
        format=format, source=source, licence=licence, label_map=label_map, cases=summaries,
        skipped={**(ignored or {}), **problems}, folds=folds, out=str(out),
    )  # fmt: skip
    (staging / "summary.json").write_text(json.dumps(asdict(result), indent=1) + "\n")
    card = {"import_id": uuid.uuid4().hex, "format": format, "source": source,
            "licence": licence, "cases": len(usable),
            "label_map": {str(k): v for k, v in label_map.items()},
            "labels": LABELS, "file_ending": FILE_ENDING}  # fmt: skip
    (staging / "dataset_card.json").write_text(json.dumps(card, indent=1) + "\n")
    # Whole or not at all: a dataset folder is only ever the result of one import.
    if out.exists():
        old = out.parent / f".{out.name}.replaced"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)
    write_yolo_yaml(out / "yolo")  # its absolute path, now that the set is in place
    return result


def _write_volume(case: LoadedCase, root: Path) -> None:
    import SimpleITK as sitk

    for sub, array in (("images", case.image.astype(np.float32)), ("labels", case.labels)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        path = root / sub / f"{case.case_id}{FILE_ENDING}"
        sitk.WriteImage(case.geometry.to_sitk(array), str(path), True)


def read_volume(dataset: Path, case_id: str) -> tuple[Volume, np.ndarray]:
    """A case of an imported dataset, whole, as the pipeline takes it: the image as a
    `Volume` (no DICOM objects behind it) and its labels."""
    root = dataset / VOLUMES
    image, geometry = _read_nifti(root / "images" / f"{case_id}{FILE_ENDING}")
    labels, _ = _read_nifti(root / "labels" / f"{case_id}{FILE_ENDING}")
    return Volume(image.astype(np.float32), geometry, datasets=[]), labels.astype(np.uint8)


def _splits(case_ids: list[str], folds: int, seed: int) -> list[dict[str, list[str]]]:
    """nnU-Net's ``splits_final.json``: ``folds`` train/val splits (fewer with few cases)."""
    rng = np.random.default_rng(seed)
    order = [case_ids[i] for i in rng.permutation(len(case_ids))]
    k = max(2, min(folds, len(order)))
    parts = [order[i::k] for i in range(k)]
    return [
        {"train": sorted(c for j, p in enumerate(parts) if j != i for c in p), "val": sorted(part)}
        for i, part in enumerate(parts)
    ]
