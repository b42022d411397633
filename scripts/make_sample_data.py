"""Generate a reproducible, synthetic 4-class brain-MRI-like image set (NOT real scans).

The demo and the tests need images in the real layout ``<out>/<class>/*.jpg`` without shipping
patient data. Each image is a dark background with a skull ring, a brain ellipse of random size,
rotation and offset, smooth tissue texture, faint ventricles, noise and a random global
intensity/contrast. The classes differ only by a lesion whose distributions overlap on purpose:

- glioma: irregular, heterogeneous, fuzzy-bordered, medium-large, inside one hemisphere;
- meningioma: round, homogeneous, sharply bounded, at the brain's edge next to the skull;
- pituitary: small, near the midline in the lower centre (the sella);
- notumor: no lesion, but the same faint "normal asymmetries" every class may carry.

Lesion contrast is sometimes barely visible and sizes and positions overlap, so a classifier has
to learn shapes and positions (no single pixel gives the class away) and cannot reach 100%.

Every image's random generator is derived from ``(seed, class, index)``: the same seed gives
byte-identical files, whatever ``per_class`` is, and a different seed gives a different set.

    python scripts/make_sample_data.py --per-class 100 --size 64 --seed 0 --out data/sample
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

if __package__ in (None, ""):  # run as a file, not with -m: make `shared` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.dataset_layout import CLASS_NAMES  # noqa: E402
from shared.errors import FLError, TargetNotEmptyError  # noqa: E402

JPEG_QUALITY = 92
MIN_IMAGE_SIZE = 16
LOW_CONTRAST_SHARE = 0.15


def image_rng(seed: int, class_name: str, index: int) -> np.random.Generator:
    """The generator of one image, independent of how many images are made in total."""
    return np.random.default_rng([seed, CLASS_NAMES.index(class_name), index])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-scale noise that varies over about ``size / cells`` pixels."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    fine = Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    field = np.asarray(fine, dtype=np.float64)
    return (field - field.mean()) / (field.std() + 1e-6)


def _brain_coords(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in the frame of a randomly placed brain whose edge is radius 1."""
    grid = np.linspace(-1.0, 1.0, size)
    ys, xs = np.meshgrid(grid, grid, indexing="ij")
    cx, cy = rng.uniform(-0.08, 0.08, size=2)
    angle = rng.uniform(-0.3, 0.3)
    half_width, half_height = rng.uniform(0.58, 0.74), rng.uniform(0.72, 0.86)
    dx, dy = xs - cx, ys - cy
    u = (np.cos(angle) * dx + np.sin(angle) * dy) / half_width
    v = (-np.sin(angle) * dx + np.cos(angle) * dy) / half_height
    return u, v


def _blob(u: np.ndarray, v: np.ndarray, centre: tuple[float, float], radius: np.ndarray | float,
          edge: float) -> np.ndarray:
    """A disc (any shape when ``radius`` varies per pixel) with a soft border ``edge`` wide."""
    distance = np.hypot(u - centre[0], v - centre[1])
    return _sigmoid((radius - distance) / edge)


def _lesion_contrast(rng: np.random.Generator) -> float:
    """Usually clearly visible, sometimes (15%) barely above the tissue texture."""
    if rng.random() < LOW_CONTRAST_SHARE:
        return rng.uniform(0.03, 0.08)
    return rng.uniform(0.12, 0.45)


def _glioma(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, size: int) -> np.ndarray:
    side = rng.choice([-1.0, 1.0])
    centre = (side * rng.uniform(0.15, 0.55), rng.uniform(-0.45, 0.4))
    radius = rng.uniform(0.16, 0.36)
    theta = np.arctan2(v - centre[1], u - centre[0])
    wobble = sum(
        rng.uniform(0.0, 0.2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)
    )
    shape = _blob(u, v, centre, radius * (1.0 + wobble), edge=0.15 * radius)
    texture = 0.85 + 0.3 * np.tanh(_smooth_noise(rng, size, 9))
    lesion = shape * texture
    if rng.random() < 0.5:  # necrotic core: darker centre, bright rim
        lesion -= 0.9 * _blob(u, v, centre, 0.45 * radius, edge=0.1 * radius)
    oedema = 0.25 * _blob(u, v, centre, 1.6 * radius, edge=0.3 * radius)
    return _lesion_contrast(rng) * (lesion + oedema)


def _meningioma(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, size: int) -> np.ndarray:
    angle = rng.uniform(0.0, 2 * np.pi)
    distance = rng.uniform(0.66, 0.86)
    centre = (distance * np.cos(angle), distance * np.sin(angle))
    radius = rng.uniform(0.12, 0.28)
    return _lesion_contrast(rng) * _blob(u, v, centre, radius, edge=0.015)


def _pituitary(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, size: int) -> np.ndarray:
    centre = (rng.uniform(-0.08, 0.08), rng.uniform(0.38, 0.62))
    radius = rng.uniform(0.08, 0.17)
    return _lesion_contrast(rng) * _blob(u, v, centre, radius, edge=0.02)


def _no_lesion(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, size: int) -> np.ndarray:
    return np.zeros_like(u)


_LESIONS = {
    "glioma": _glioma,
    "meningioma": _meningioma,
    "notumor": _no_lesion,
    "pituitary": _pituitary,
}


def render_image(class_name: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """One ``size`` x ``size`` grayscale image (uint8) of ``class_name``."""
    u, v = _brain_coords(rng, size)
    r = np.hypot(u, v)
    brain = _blob(u, v, (0.0, 0.0), 0.93, edge=0.02)
    skull_thickness = rng.uniform(0.06, 0.14)
    skull = _sigmoid((r - 0.98) / 0.02) * _sigmoid((1.0 + skull_thickness - r) / 0.02)

    tissue = (
        rng.uniform(0.36, 0.5)
        + 0.03 * _smooth_noise(rng, size, 6)
        + 0.025 * _smooth_noise(rng, size, 14)
        + 0.05 * _blob(u, v, (0.0, 0.0), 0.6, edge=0.12)  # brighter white matter core
    )
    ventricle_u, ventricle_v = rng.uniform(0.07, 0.14), rng.uniform(-0.18, 0.0)
    for side in (-1.0, 1.0):
        tissue -= rng.uniform(0.05, 0.15) * _blob(
            u / 0.45, v, (side * ventricle_u / 0.45, ventricle_v), 0.18, edge=0.05
        )
    if rng.random() < 0.5:  # a normal asymmetry that every class, notumor included, may carry
        centre = (rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6))
        tissue += rng.uniform(-0.06, 0.08) * _blob(u, v, centre, rng.uniform(0.1, 0.3), edge=0.08)
    tissue += _LESIONS[class_name](rng, u, v, size)

    image = 0.02 + brain * tissue + skull * rng.uniform(0.6, 0.9)
    image = np.clip(image, 0.0, 1.0) ** rng.uniform(0.8, 1.25)
    image = image * rng.uniform(0.8, 1.2) + rng.uniform(-0.04, 0.04)
    image += rng.normal(0.0, rng.uniform(0.01, 0.04), size=image.shape)
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _prepare_target(out: Path, force: bool) -> None:
    """Refuse to mix with existing files; with ``force`` replace only the class folders."""
    if out.exists() and not out.is_dir():
        raise TargetNotEmptyError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise TargetNotEmptyError(f"{out} is not empty; refusing to write sample data into it")
        for name in CLASS_NAMES:
            if (out / name).is_dir():
                shutil.rmtree(out / name)


def generate_sample_dataset(
    out: Path, per_class: int = 100, image_size: int = 64, seed: int = 0, force: bool = False
) -> dict[str, int]:
    """Write ``per_class`` JPEGs per class under ``out/<class>/`` and return the counts.

    Raises ``TargetNotEmptyError`` when ``out`` holds anything and ``force`` is false; with
    ``force`` only the four class folders are replaced, other files in ``out`` stay.
    """
    if per_class < 1 or image_size < MIN_IMAGE_SIZE or seed < 0:
        raise ValueError(
            f"need per_class >= 1, image_size >= {MIN_IMAGE_SIZE}, seed >= 0 "
            f"(got {per_class}, {image_size}, {seed})"
        )
    out = Path(out)
    _prepare_target(out, force)
    for name in CLASS_NAMES:
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = render_image(name, image_rng(seed, name, index), image_size)
            Image.fromarray(pixels, mode="L").save(
                folder / f"{name}_{index:04d}.jpg", quality=JPEG_QUALITY
            )
    return {name: per_class for name in CLASS_NAMES}


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than ``minimum``."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="make_sample_data",
        description="Generate a synthetic 4-class brain-MRI-like dataset (not real scans).",
    )
    parser.add_argument("--per-class", type=_at_least(1), default=100, help="images per class")
    parser.add_argument(
        "--size", type=_at_least(MIN_IMAGE_SIZE), default=224, help="pixels per side"
    )
    parser.add_argument("--seed", type=_at_least(0), default=0, help="same seed, same bytes")
    parser.add_argument("--out", type=Path, default=Path("data/sample"), help="output folder")
    parser.add_argument("--force", action="store_true", help="replace the class folders in --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        counts = generate_sample_dataset(args.out, args.per_class, args.size, args.seed, args.force)
    except FLError as error:
        print(f"error: {error}\nhint: {error.hint}", file=sys.stderr)
        return 2
    summary = ", ".join(f"{name} {count}" for name, count in counts.items())
    print(f"wrote {sum(counts.values())} synthetic {args.size}px images to {args.out} ({summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
