"""What a dataset folder looks like: ``<root>/<class>/<image>``, with the four tumour classes.

The splitter, the client's data loader and the dataset summary all read folders through
``scan_dataset`` so that they agree on which files count as images and which are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from shared.errors import DatasetError

#: The classes in the order every model output uses. Never reorder: it is part of the model.
CLASS_NAMES: tuple[str, ...] = ("glioma", "meningioma", "notumor", "pituitary")
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class SkippedFile:
    """A file inside a class folder that is not a readable image, and why."""

    path: Path
    reason: str


@dataclass
class DatasetScan:
    """The readable images of a dataset folder, per class, plus what was skipped."""

    root: Path
    images: dict[str, list[Path]] = field(default_factory=dict)
    skipped: list[SkippedFile] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {name: len(self.images.get(name, [])) for name in CLASS_NAMES}

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def check_image(path: Path, *, verify: bool = True) -> str | None:
    """Return why ``path`` is not a usable image, or ``None`` when it is one."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f"not an image file ({path.suffix or 'no extension'})"
    if not verify:
        return None
    try:
        with Image.open(path) as image:
            image.load()  # decodes the pixels: verify() alone misses truncated JPEGs
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"unreadable image: {exc.__class__.__name__}: {exc}"
    return None


def scan_dataset(
    root: Path, *, require_all_classes: bool = True, verify: bool = True
) -> DatasetScan:
    """List the images of ``root`` per class, skipping (and recording) unusable files.

    Raises ``DatasetError`` when the root is missing, has no class folders, has a folder that
    is not one of ``CLASS_NAMES``, lacks a class (unless ``require_all_classes`` is false), or
    holds no readable image at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p.name for p in folders if p.name not in CLASS_NAMES]
    if not folders:
        raise DatasetError(f"{root} has no class folders (expected {', '.join(CLASS_NAMES)})")
    if unknown:
        raise DatasetError(
            f"{root} has folders that are not tumour classes: {', '.join(unknown)} "
            f"(expected {', '.join(CLASS_NAMES)})"
        )
    present = {p.name for p in folders}
    missing = [name for name in CLASS_NAMES if name not in present]
    if missing and require_all_classes:
        raise DatasetError(f"{root} is missing class folder(s): {', '.join(missing)}")
    scan = DatasetScan(root=root)
    for name in CLASS_NAMES:
        scan.images[name] = []
        folder = root / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or path.is_dir():
                continue
            reason = check_image(path, verify=verify)
            if reason is None:
                scan.images[name].append(path)
            else:
                scan.skipped.append(SkippedFile(path, reason))
    if scan.total == 0:
        raise DatasetError(f"{root} holds no readable images")
    return scan


def validation_size(members: int, val_fraction: float) -> int:
    """Images of one class (``members``) that go to validation: the split rule the loader uses.

    A class with at least two images always keeps one for training and gives one to validation
    (when ``val_fraction > 0``), so small sites still validate on every class they have.
    """
    n_val = round(members * val_fraction)
    if val_fraction > 0 and members >= 2:
        n_val = min(max(n_val, 1), members - 1)
    return n_val


def training_size(counts: dict[str, int], val_fraction: float) -> int:
    """Training images of a scan's per-class ``counts`` (what a site's privacy is planned with)."""
    return sum(members - validation_size(members, val_fraction) for members in counts.values())
