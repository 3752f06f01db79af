"""FER2013 in the forms people actually have it, loaded into memory as uint8 arrays.

Supported sources (all give the same :class:`FaceDataset`):

* the Kaggle CSV (``emotion,pixels,Usage``; header spellings vary, ``Usage`` may be missing);
* an image-folder tree ``train/<class>/*.jpg`` + ``test/<class>/*.jpg`` where the
  ``Training_``/``PublicTest_``/``PrivateTest_`` filename prefixes give the split;
* the same tree inside a ``.tar``/``.tar.gz`` archive, read without extracting;
* any folder of ``<class>/<images>`` (e.g. CK+), which becomes one ``test`` split.

FER2013 is small (35,887 faces of 48x48 = 83 MB), so holding it in memory and
augmenting whole batches on the device beats a per-image DataLoader pipeline.
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from shared.emotions import EMOTIONS, canonical_emotion

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm"}
#: Split names. "public"/"private" are FER2013's PublicTest/PrivateTest; "val" is
#: carved from train when a source has no PublicTest; "test" is an unlabelled-role test set.
SPLITS = ("train", "val", "public", "private", "test")
_PREFIX_SPLIT = {"training": "train", "publictest": "public", "privatetest": "private"}
_USAGE_SPLIT = {"training": "train", "publictest": "public", "privatetest": "private"}


class DatasetError(ValueError):
    """The data source is missing, empty or not in a recognised layout."""


@dataclass
class FaceDataset:
    """Grayscale faces (N, S, S) uint8 with canonical labels and a split name per sample."""

    images: np.ndarray
    labels: np.ndarray  # int64 index into EMOTIONS
    splits: np.ndarray  # str, one of SPLITS
    #: split -> {unknown class name -> count}: images not loaded because their class is not an emotion
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, *split_names: str) -> FaceDataset:
        mask = np.isin(self.splits, split_names)
        skipped = {s: dict(c) for s, c in self.skipped.items() if s in split_names}
        return FaceDataset(self.images[mask], self.labels[mask], self.splits[mask], skipped)

    def skipped_counts(self) -> dict[str, int]:
        """Unknown class name -> images skipped, over the splits this dataset holds."""
        total: dict[str, int] = {}
        for counts in self.skipped.values():
            for cls, n in counts.items():
                total[cls] = total.get(cls, 0) + n
        return total

    def split_counts(self) -> dict[str, int]:
        names, counts = np.unique(self.splits, return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts, strict=True)}

    def fingerprint(self) -> str:
        """Content hash of pixels, labels and splits: identifies the exact data a model saw."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(self.labels.astype(np.int64).tobytes())
        h.update("\n".join(self.splits.tolist()).encode())
        return h.hexdigest()[:16]


def concat(parts: list[FaceDataset]) -> FaceDataset:
    """One dataset of several (e.g. FER2013's train split and photo crops), in the given order."""
    skipped: dict[str, dict[str, int]] = {}
    for part in parts:
        for split, counts in part.skipped.items():
            for cls, n in counts.items():
                skipped.setdefault(split, {})[cls] = skipped.get(split, {}).get(cls, 0) + n
    return FaceDataset(
        np.concatenate([p.images for p in parts]),
        np.concatenate([p.labels for p in parts]),
        np.concatenate([p.splits for p in parts]),
        skipped,
    )


def to_gray(data: bytes | Image.Image, size: int) -> np.ndarray:
    """An image as the classifier trains on it: PIL's "L" (BT.601), then PIL's bilinear resize to
    ``size`` x ``size``. The server's crop and evaluation's resize agree with this to one grey level
    (tests/test_preprocess_agreement.py)."""
    img = data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data))
    img = img.convert("L")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _split_from_name(filename: str) -> str | None:
    stem = PurePosixPath(filename).name.lower()
    for prefix, split in _PREFIX_SPLIT.items():
        if stem.startswith(prefix):
            return split
    return None


def _build(records: Iterable[tuple[str, str | None, str, bytes]], size: int) -> FaceDataset:
    """records: (class folder name, split or None, relative path, encoded image bytes).

    Samples are ordered by path so a folder and its archive give the same dataset
    (and the same fingerprint) whatever order the archive stores members in.
    """
    images: list[np.ndarray] = []
    labels: list[int] = []
    splits: list[str] = []
    skipped: dict[str, dict[str, int]] = {}
    for cls, split, _, blob in sorted(records, key=lambda r: r[2]):
        name = canonical_emotion(cls)
        if name is None:
            per_split = skipped.setdefault(split or "test", {})
            per_split[cls] = per_split.get(cls, 0) + 1
            continue
        images.append(to_gray(blob, size))
        labels.append(EMOTIONS.index(name))
        splits.append(split or "test")
    if not labels:
        raise DatasetError(f"no images of a known emotion class were found (skipped {skipped})")
    return FaceDataset(
        np.stack(images),
        np.asarray(labels, dtype=np.int64),
        np.asarray(splits, dtype=object).astype(str),
        skipped,
    )


def _tree_records(
    paths: Iterable[tuple[PurePosixPath, bytes | Path]],
) -> Iterator[tuple[str, str | None, str, bytes]]:
    """Interpret relative paths as ``[train|test/]<class>/<file>``."""
    for rel, payload in paths:
        if rel.suffix.lower() not in IMAGE_SUFFIXES or len(rel.parts) < 2:
            continue
        cls = rel.parts[-2]
        split = _split_from_name(rel.name)
        if split is None:
            top = rel.parts[-3].lower() if len(rel.parts) >= 3 else ""
            split = {"train": "train", "training": "train", "test": "test", "testing": "test"}.get(top)
            split = split or {"val": "val", "valid": "val", "validation": "val"}.get(top)
        blob = payload.read_bytes() if isinstance(payload, Path) else payload
        yield cls, split, rel.as_posix().lstrip("./"), blob


def _iter_folder(root: Path) -> Iterator[tuple[PurePosixPath, bytes | Path]]:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            yield PurePosixPath(p.relative_to(root).as_posix()), p


def _iter_tar(path: Path) -> Iterator[tuple[PurePosixPath, bytes | Path]]:
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            f = tar.extractfile(member)
            if f is not None:
                yield PurePosixPath(member.name), f.read()


def _norm_header(name: str) -> str:
    return name.strip().lower()


def _load_csv(path: Path, size: int) -> FaceDataset:
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = [_norm_header(h) for h in next(reader)]
        try:
            i_label = header.index("emotion")
            i_pixels = header.index("pixels")
        except ValueError as exc:
            raise DatasetError(f"{path}: CSV needs 'emotion' and 'pixels' columns, got {header}") from exc
        i_usage = header.index("usage") if "usage" in header else None
        images, labels, splits = [], [], []
        for row in reader:
            if not row:
                continue
            pixels = np.array(row[i_pixels].split(), dtype=np.uint8)
            side = round(len(pixels) ** 0.5)
            if side * side != len(pixels):
                raise DatasetError(f"{path}: a row has {len(pixels)} pixels, not a square image")
            img = pixels.reshape(side, side)
            images.append(to_gray(Image.fromarray(img), size))
            labels.append(int(row[i_label]))
            usage = None
            if i_usage is not None:
                usage = _USAGE_SPLIT.get(row[i_usage].strip().lower())
                if usage is None:  # never guess "train": a test row there would leak into training
                    raise DatasetError(
                        f"{path}: unknown Usage {row[i_usage]!r} "
                        "(expected Training, PublicTest or PrivateTest)"
                    )
            splits.append(usage or "train")
    if not labels:
        raise DatasetError(f"{path}: CSV has no rows")
    lab = np.asarray(labels, dtype=np.int64)
    if lab.min() < 0 or lab.max() >= len(EMOTIONS):
        raise DatasetError(f"{path}: labels must be 0..{len(EMOTIONS) - 1} (FER2013 order {EMOTIONS})")
    return FaceDataset(np.stack(images), lab, np.asarray(splits).astype(str))


def _carve_val(ds: FaceDataset, fraction: float, seed: int) -> FaceDataset:
    """Move a stratified fraction of train to val when the source has no validation split."""
    splits = ds.splits.copy()
    rng = random.Random(seed)
    for label in np.unique(ds.labels):
        idx = np.flatnonzero((ds.labels == label) & (splits == "train")).tolist()
        rng.shuffle(idx)
        for i in idx[: round(len(idx) * fraction)]:
            splits[i] = "val"
    return FaceDataset(ds.images, ds.labels, splits, ds.skipped)


def load_dataset(path: str | Path, size: int = 48, val_fraction: float = 0.1, seed: int = 0) -> FaceDataset:
    """Load any supported FER2013 form (see module docstring) at ``size`` x ``size``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    if path.is_file() and path.suffix.lower() == ".csv":
        ds = _load_csv(path, size)
    elif path.is_file() and tarfile.is_tarfile(path):
        ds = _build(_tree_records(_iter_tar(path)), size)
    elif path.is_dir():
        csvs = sorted(path.glob("*.csv"))
        ds = (
            _load_csv(csvs[0], size)
            if csvs and not any(path.glob("*/"))
            else _build(_tree_records(_iter_folder(path)), size)
        )
    else:
        raise DatasetError(
            f"{path}: expected a FER2013 CSV, a .tar(.gz) archive or a folder of class folders"
        )
    present = set(ds.splits.tolist())
    if "train" in present and not present & {"val", "public"}:
        ds = _carve_val(ds, val_fraction, seed)
    return ds
