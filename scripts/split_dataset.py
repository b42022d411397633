"""Split one class-folder dataset into N site folders ``<out>/<site>/<class>/<file>``.

Federated runs need one dataset per hospital; this makes them from a single folder such as
``data/sample``, reproducibly (``--seed``) and auditably (``<out>/manifest.json`` records every
file with its sha256, so a split can be checked later with ``verify_manifest``).

Modes:

- ``iid``: stratified; every site gets a near-equal share of every class. ``--sites 2 --mode iid``
  is the 50/50 two-client split the seed project's old script made.
- ``dirichlet``: label skew; for each class, the share of each site is drawn from
  Dirichlet(alpha) (small alpha, strong skew). A site left with no image at all receives one image
  from the site that holds the most (taken from that site's largest class), so every site can train.
- ``quantity``: quantity skew; ``--quantities 500,300,400`` gives each site that many images
  (integers) or ``--quantities 0.5,0.3,0.2`` that share of all images (decimals, sum <= 1). Each
  site is stratified: its class mix follows the source's.

Files are copied, hard-linked or symlinked (``--link``). Every site gets all four class folders,
even when one is empty, so each site folder is a valid dataset on its own. Files that are not
readable images are skipped and listed. A non-empty ``OUT`` is refused unless ``--force``, which
removes only the site folders about to be written and the old manifest.

    python scripts/split_dataset.py data/sample data/sites --sites 3 --mode dirichlet --alpha 0.5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
from rich.console import Console
from rich.table import Table

if __package__ in (None, ""):  # run as a file, not with -m: make `shared` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.split_plan import MODES, OPTIONS_HINT, SplitMode, plan_counts  # noqa: E402
from shared.dataset_layout import CLASS_NAMES, SkippedFile, scan_dataset  # noqa: E402
from shared.errors import DatasetError, FLError, TargetNotEmptyError, UsageError  # noqa: E402

LinkMode = Literal["copy", "hardlink", "symlink"]
LINKS: tuple[str, ...] = ("copy", "hardlink", "symlink")
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
_SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class SplitResult:
    """What a split wrote: the files of each site, what it skipped and what it replaced."""

    source: Path
    out: Path
    sites: list[str]
    files: dict[str, dict[str, list[Path]]]  # site -> class -> written paths
    skipped: list[SkippedFile]
    manifest_path: Path
    removed: list[Path] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        return {
            site: {name: len(self.files[site][name]) for name in CLASS_NAMES} for site in self.sites
        }


# --- writing the site folders -----------------------------------------------------------------


def _site_names(sites: Sequence[str] | int) -> list[str]:
    if isinstance(sites, str):
        sites = [sites]
    names = [f"site{i + 1}" for i in range(sites)] if isinstance(sites, int) else list(sites)
    if not names:
        raise UsageError("need at least one site", hint=OPTIONS_HINT)
    bad = [name for name in names if not _SITE_NAME.fullmatch(name) or name == MANIFEST_NAME]
    if bad:
        raise UsageError(
            f"site names must be letters, digits, '.', '_' or '-' (not starting with '.'): {bad}",
            hint=OPTIONS_HINT,
        )
    if len(set(names)) != len(names):
        raise UsageError(f"site names must be unique, got {names}", hint=OPTIONS_HINT)
    return names


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _prepare_target(source: Path, out: Path, sites: list[str], force: bool) -> list[Path]:
    """Refuse to overwrite; with ``force`` remove only this split's site folders and manifest."""
    real_source, real_out = source.resolve(), out.resolve()
    if _is_within(real_out, real_source):
        raise TargetNotEmptyError(f"{out} is inside the source {source}; split into another folder")
    if any(_is_within(real_source, real_out / site) for site in sites):
        raise TargetNotEmptyError(
            f"the source {source} lies inside a site folder this split would write"
        )
    if out.exists() and not out.is_dir():
        raise TargetNotEmptyError(f"{out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return []
    if not force:
        raise TargetNotEmptyError(f"{out} is not empty; refusing to overwrite it")
    doomed = [p for p in [*(out / site for site in sites), out / MANIFEST_NAME] if p.exists()]
    for path in doomed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return doomed


def _place(source: Path, target: Path, link: LinkMode) -> None:
    if link == "copy":
        shutil.copy2(source, target)
    elif link == "hardlink":
        try:
            os.link(source, target)
        except OSError as exc:
            raise FLError(
                f"cannot hard-link {source} to {target}: {exc.strerror}",
                hint="Hard links need the same file system; use --link copy or symlink.",
            ) from exc
    else:
        target.symlink_to(source.resolve())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(source: Path, mode: str, parameters: dict, seed: int, result: SplitResult) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "source": str(source.resolve()),
        "mode": mode,
        "parameters": parameters,
        "seed": seed,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "counts": result.counts,
        "sites": {
            site: [
                {
                    "class": name,
                    "file": path.relative_to(result.out / site).as_posix(),
                    "sha256": _sha256(path),
                    "size": path.stat().st_size,
                }
                for name in CLASS_NAMES
                for path in result.files[site][name]
            ]
            for site in result.sites
        },
        "skipped": [
            {"file": item.path.relative_to(source).as_posix(), "reason": item.reason}
            for item in result.skipped
        ],
    }


def split_dataset(
    source: Path,
    out: Path,
    sites: Sequence[str] | int = 2,
    *,
    mode: SplitMode = "iid",
    alpha: float = 0.5,
    quantities: Sequence[float] | None = None,
    link: LinkMode = "copy",
    seed: int = 0,
    force: bool = False,
) -> SplitResult:
    """Split ``source`` into ``out/<site>/<class>/`` folders and write ``out/manifest.json``.

    ``sites`` is a count (names site1..siteN) or a list of names. The same source, arguments and
    seed always give the same assignment of files to sites. Raises ``DatasetError`` for a bad
    source or arguments and ``TargetNotEmptyError`` for a non-empty ``out`` without ``force``.
    """
    if link not in LINKS:
        raise UsageError(
            f"unknown link mode {link!r}; choose one of {', '.join(LINKS)}", hint=OPTIONS_HINT
        )
    if quantities is not None and mode != "quantity":
        raise UsageError("--quantities only applies to --mode quantity", hint=OPTIONS_HINT)
    source, out = Path(source), Path(out)
    names = _site_names(sites)
    scan = scan_dataset(source, require_all_classes=False)
    rng = np.random.default_rng(seed)
    counts = plan_counts(
        [len(scan.images[name]) for name in CLASS_NAMES], len(names), mode,
        alpha=alpha, quantities=quantities, rng=rng,
    )
    removed = _prepare_target(source, out, names, force)
    result = SplitResult(
        source=source, out=out, sites=names, files={site: {} for site in names},
        skipped=scan.skipped, manifest_path=out / MANIFEST_NAME, removed=removed,
    )
    for column, name in enumerate(CLASS_NAMES):
        shuffled = [scan.images[name][i] for i in rng.permutation(len(scan.images[name]))]
        bounds = np.concatenate([[0], np.cumsum(counts[:, column])])
        for row, site in enumerate(names):
            folder = out / site / name
            folder.mkdir(parents=True, exist_ok=True)
            picked = sorted(shuffled[bounds[row]:bounds[row + 1]])
            for path in picked:
                _place(path, folder / path.name, link)
            result.files[site][name] = [folder / path.name for path in picked]
    parameters: dict = {"sites": names, "link": link}
    if mode == "dirichlet":
        parameters["alpha"] = alpha
    if mode == "quantity":
        parameters["quantities"] = [
            q if isinstance(q, (int, float)) else q.item() for q in quantities or []
        ]
    manifest = _manifest(source, mode, parameters, seed, result)
    result.manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return result


def verify_manifest(manifest_path: Path) -> list[str]:
    """Compare a split's manifest with the files on disk; return the problems (empty: intact).

    Reports missing files, changed sizes or checksums, and files in a site's class folders
    that the manifest does not list.
    """
    manifest_path = Path(manifest_path)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        sites = manifest["sites"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(
            f"cannot read split manifest {manifest_path}: {exc}",
            hint="Point at the manifest.json that split_dataset wrote, or split again.",
        ) from exc
    root = manifest_path.parent
    problems: list[str] = []
    for site, entries in sites.items():
        listed: set[Path] = set()
        for entry in entries:
            path = root / site / entry["file"]
            listed.add(path)
            if not path.is_file():
                problems.append(f"{site}/{entry['file']}: missing")
            elif (size := path.stat().st_size) != entry["size"]:
                problems.append(f"{site}/{entry['file']}: size {size} != {entry['size']}")
            elif _sha256(path) != entry["sha256"]:
                problems.append(f"{site}/{entry['file']}: sha256 differs from the manifest")
        for name in CLASS_NAMES:
            folder = root / site / name
            if not folder.is_dir():
                continue
            extra = sorted(p for p in folder.iterdir() if p not in listed)
            problems.extend(f"{site}/{name}/{p.name}: not in the manifest" for p in extra)
    return problems


# --- command line -----------------------------------------------------------------------------


def _parse_sites(text: str) -> list[str] | int:
    if text.isdigit():
        if int(text) < 1:
            raise argparse.ArgumentTypeError("need at least one site")
        return int(text)
    return [name.strip() for name in text.split(",")]


def _parse_quantities(text: str) -> list[float]:
    """``500,300,400`` are image counts; ``0.5,0.3,0.2`` (any decimal point) are shares."""
    parts = [part.strip() for part in text.split(",")]
    try:
        if any("." in part for part in parts):
            return [float(part) for part in parts]
        return [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers such as 500,300,400, got {text!r}"
        ) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="split_dataset",
        description="Split one class-folder dataset into per-site folders (IID or non-IID).",
    )
    parser.add_argument("source", type=Path, help="dataset folder with one sub-folder per class")
    parser.add_argument("out", type=Path, help="where <site>/<class>/ folders are written")
    parser.add_argument(
        "--sites", type=_parse_sites, default=None,
        help="number of sites (site1..siteN) or comma-separated names; default 2, or one per "
        "--quantities value",
    )
    parser.add_argument("--mode", choices=MODES, default="iid")
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    parser.add_argument(
        "--quantities", type=_parse_quantities, default=None,
        help="images per site (500,300,400) or shares (0.5,0.3,0.2) for --mode quantity",
    )
    parser.add_argument("--link", choices=LINKS, default="copy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="replace this split's site folders")
    return parser


def _summary_table(result: SplitResult) -> Table:
    table = Table(title=f"Images per site in {result.out}")
    table.add_column("site")
    for name in CLASS_NAMES:
        table.add_column(name, justify="right")
    table.add_column("total", justify="right", style="bold")
    counts = result.counts
    for site in result.sites:
        row = [counts[site][name] for name in CLASS_NAMES]
        table.add_row(site, *map(str, row), str(sum(row)))
    totals = [sum(counts[site][name] for site in result.sites) for name in CLASS_NAMES]
    table.add_row("all", *map(str, totals), str(sum(totals)), style="bold")
    return table


def _skipped_table(result: SplitResult) -> Table:
    table = Table(
        title=f"Skipped {len(result.skipped)} file(s) in {result.source}", title_style="yellow"
    )
    table.add_column("file")
    table.add_column("reason")
    for item in result.skipped:
        table.add_row(item.path.relative_to(result.source).as_posix(), item.reason)
    return table


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sites = args.sites
    if sites is None:
        sites = len(args.quantities) if args.quantities else 2
    console = Console()
    try:
        result = split_dataset(
            args.source, args.out, sites, mode=args.mode, alpha=args.alpha,
            quantities=args.quantities, link=args.link, seed=args.seed, force=args.force,
        )
    except FLError as error:
        print(f"error: {error}\nhint: {error.hint}", file=sys.stderr)
        return 2
    for path in result.removed:
        console.print(f"[yellow]removed previous {path} (--force)[/]")
    written = {*result.sites, MANIFEST_NAME}
    for path in sorted(p for p in result.out.iterdir() if p.name not in written):
        console.print(f"[yellow]kept {path}: not part of this split[/]")
    if result.skipped:
        console.print(_skipped_table(result))
    console.print(_summary_table(result))
    console.print(f"manifest: {result.manifest_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
