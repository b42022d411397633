"""The dataset splitter: modes, link kinds, bad inputs, manifest and command line."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scripts.make_sample_data import generate_sample_dataset
from scripts.split_dataset import SplitResult, main, split_dataset, verify_manifest
from scripts.split_plan import apportion, plan_counts
from shared.dataset_layout import CLASS_NAMES, scan_dataset
from shared.errors import DatasetError, TargetNotEmptyError, UsageError

REPO = Path(__file__).resolve().parent.parent


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assignment(result: SplitResult) -> dict[str, list[str]]:
    """site -> sorted 'class/file' names, to compare splits."""
    return {
        site: sorted(f"{name}/{p.name}" for name in CLASS_NAMES for p in result.files[site][name])
        for site in result.sites
    }


def _assert_partition(source: Path, result: SplitResult) -> None:
    """Every source image is in exactly one site, byte-identical, in its own class folder."""
    placed = [
        (name, path) for site in result.sites for name in CLASS_NAMES
        for path in result.files[site][name]
    ]
    keys = [f"{name}/{path.name}" for name, path in placed]
    assert len(keys) == len(set(keys)), "a file landed in two sites"
    scan = scan_dataset(source, require_all_classes=False)
    assert sorted(keys) == sorted(f"{n}/{p.name}" for n in CLASS_NAMES for p in scan.images[n])
    for name, path in placed:
        assert path.parent.name == name
        assert _sha(path) == _sha(source / name / path.name)
    for site in result.sites:
        assert scan_dataset(result.out / site, verify=False).counts == result.counts[site]


@pytest.fixture
def dataset20(tmp_path: Path) -> Path:
    """20 images per class: enough for skew and stratification to be visible."""
    root = tmp_path / "dataset20"
    generate_sample_dataset(root, per_class=20, image_size=16, seed=1)
    return root


# --- modes ----------------------------------------------------------------------------------------


def test_iid_two_sites_is_the_old_fifty_fifty_split(tiny_dataset: Path, tmp_path: Path) -> None:
    result = split_dataset(tiny_dataset, tmp_path / "out", 2, mode="iid")

    assert result.sites == ["site1", "site2"]
    assert result.counts == {site: {name: 3 for name in CLASS_NAMES} for site in result.sites}
    _assert_partition(tiny_dataset, result)


def test_iid_is_stratified_and_near_equal(dataset20: Path, tmp_path: Path) -> None:
    result = split_dataset(dataset20, tmp_path / "out", ["a", "b", "c"], mode="iid", seed=5)

    counts = np.array([[result.counts[s][n] for n in CLASS_NAMES] for s in result.sites])
    assert (counts.max(axis=0) - counts.min(axis=0) <= 1).all()
    assert counts.sum(axis=1).max() - counts.sum(axis=1).min() <= 1
    assert counts.sum() == 80
    _assert_partition(dataset20, result)


def test_dirichlet_small_alpha_is_skewed_and_reproducible(dataset20: Path, tmp_path: Path) -> None:
    first = split_dataset(dataset20, tmp_path / "a", 3, mode="dirichlet", alpha=0.1, seed=3)
    again = split_dataset(dataset20, tmp_path / "b", 3, mode="dirichlet", alpha=0.1, seed=3)
    other = split_dataset(dataset20, tmp_path / "c", 3, mode="dirichlet", alpha=0.1, seed=4)
    iid = split_dataset(dataset20, tmp_path / "d", 3, mode="iid", seed=3)

    def skew(result: SplitResult) -> float:
        counts = np.array([[result.counts[s][n] for n in CLASS_NAMES] for s in result.sites])
        shares = counts / counts.sum(axis=1, keepdims=True)
        return float(np.abs(shares - 0.25).sum())

    assert skew(first) > 3 * skew(iid) + 0.5
    assert _assignment(first) == _assignment(again)
    assert _assignment(first) != _assignment(other)
    _assert_partition(dataset20, first)


@pytest.mark.parametrize("seed", range(20))
def test_dirichlet_never_leaves_a_site_empty(seed: int) -> None:
    counts = plan_counts([3, 2, 0, 1], 5, "dirichlet", alpha=0.01, rng=np.random.default_rng(seed))

    assert (counts.sum(axis=1) >= 1).all()
    assert counts.sum(axis=0).tolist() == [3, 2, 0, 1]
    assert (counts >= 0).all()


def test_quantity_counts_are_exact_and_stratified(dataset20: Path, tmp_path: Path) -> None:
    result = split_dataset(dataset20, tmp_path / "out", 3, mode="quantity", quantities=[40, 24, 12])

    totals = [sum(result.counts[s].values()) for s in result.sites]
    assert totals == [40, 24, 12]
    for site, total in zip(result.sites, totals):
        for name in CLASS_NAMES:
            assert abs(result.counts[site][name] - total / 4) <= 1


def test_quantity_shares(tiny_dataset: Path, tmp_path: Path) -> None:
    result = split_dataset(
        tiny_dataset, tmp_path / "out", 2, mode="quantity", quantities=[0.5, 0.25]
    )

    assert [sum(result.counts[s].values()) for s in result.sites] == [12, 6]


@pytest.mark.parametrize(
    ("quantities", "error", "message"),
    [
        ([20, 5], DatasetError, "ask for 25 images but the source holds only 24"),
        ([5, 5, 5], UsageError, "one quantity per site"),
        ([0.8, 0.4], UsageError, "sum to at most 1"),
        ([5, 0], UsageError, "must be positive"),
    ],
)
def test_bad_quantities_are_refused(
    tiny_dataset: Path, tmp_path: Path, quantities: list[float], error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        split_dataset(tiny_dataset, tmp_path / "out", 2, mode="quantity", quantities=quantities)
    assert not (tmp_path / "out").exists()


def test_apportion_sums_exactly_and_follows_weights() -> None:
    assert apportion([1, 1, 1], 10) in ([4, 3, 3], [3, 4, 3], [3, 3, 4])
    assert apportion([0.7, 0.2, 0.1], 20) == [14, 4, 2]
    assert sum(apportion([0.33, 0.33, 0.34], 7)) == 7


def test_every_site_gets_all_class_folders(tmp_path: Path) -> None:
    source = tmp_path / "src"
    generate_sample_dataset(source, per_class=2, image_size=16)
    for name in ("meningioma", "notumor", "pituitary"):
        for path in (source / name).iterdir():
            path.unlink()
        (source / name).rmdir()

    result = split_dataset(source, tmp_path / "out", 2)

    for site in result.sites:
        assert sorted(p.name for p in (tmp_path / "out" / site).iterdir()) == sorted(CLASS_NAMES)
        assert scan_dataset(tmp_path / "out" / site).counts["glioma"] == 1


# --- link kinds -----------------------------------------------------------------------------------


def test_hardlink_shares_the_inode(tiny_dataset: Path, tmp_path: Path) -> None:
    result = split_dataset(tiny_dataset, tmp_path / "out", 2, link="hardlink")

    for site in result.sites:
        for name in CLASS_NAMES:
            for path in result.files[site][name]:
                assert not path.is_symlink()
                assert path.stat().st_ino == (tiny_dataset / name / path.name).stat().st_ino


def test_symlink_points_at_the_source(tiny_dataset: Path, tmp_path: Path) -> None:
    result = split_dataset(tiny_dataset, tmp_path / "out", 2, link="symlink")

    for site in result.sites:
        for name in CLASS_NAMES:
            for path in result.files[site][name]:
                assert path.is_symlink()
                assert path.resolve() == (tiny_dataset / name / path.name).resolve()


def test_copy_makes_independent_files(tiny_dataset: Path, tmp_path: Path) -> None:
    result = split_dataset(tiny_dataset, tmp_path / "out", 2, link="copy")

    path = result.files["site1"]["glioma"][0]
    assert not path.is_symlink()
    assert path.stat().st_ino != (tiny_dataset / "glioma" / path.name).stat().st_ino


# --- bad inputs -----------------------------------------------------------------------------------


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        split_dataset(tmp_path / "nowhere", tmp_path / "out", 2)


def test_source_without_class_folders(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "scan.jpg").write_bytes(b"x")

    with pytest.raises(DatasetError, match="no class folders") as error:
        split_dataset(tmp_path / "flat", tmp_path / "out", 2)
    assert "glioma" in error.value.hint
    assert not (tmp_path / "out").exists()


def test_unknown_class_folder(tiny_dataset: Path, tmp_path: Path) -> None:
    (tiny_dataset / "astrocytoma").mkdir()

    with pytest.raises(DatasetError, match="astrocytoma"):
        split_dataset(tiny_dataset, tmp_path / "out", 2)


def test_corrupt_and_non_image_files_are_skipped_and_recorded(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    (tiny_dataset / "glioma" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (tiny_dataset / "pituitary" / "notes.txt").write_text("not an image")

    result = split_dataset(tiny_dataset, tmp_path / "out", 2)

    skipped = {item.path.name: item.reason for item in result.skipped}
    assert set(skipped) == {"broken.jpg", "notes.txt"}
    assert "unreadable" in skipped["broken.jpg"] and "not an image" in skipped["notes.txt"]
    names = [p.name for s in result.sites for n in CLASS_NAMES for p in result.files[s][n]]
    assert len(names) == 24 and "broken.jpg" not in names
    manifest = json.loads(result.manifest_path.read_text())
    recorded = {item["file"] for item in manifest["skipped"]}
    assert recorded == {"glioma/broken.jpg", "pituitary/notes.txt"}


def test_non_empty_target_refused_then_replaced_with_force(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    (out / "site1" / "glioma").mkdir(parents=True)
    (out / "site1" / "glioma" / "stale.jpg").write_bytes(b"stale")
    (out / "README.txt").write_text("keep me")

    with pytest.raises(TargetNotEmptyError):
        split_dataset(tiny_dataset, out, 2)
    assert (out / "site1" / "glioma" / "stale.jpg").exists()
    assert not (out / "manifest.json").exists()

    result = split_dataset(tiny_dataset, out, 2, force=True)

    assert out / "site1" in result.removed
    assert not (out / "site1" / "glioma" / "stale.jpg").exists()
    assert (out / "README.txt").read_text() == "keep me"
    assert verify_manifest(result.manifest_path) == []


def test_refuses_to_write_inside_the_source(tiny_dataset: Path) -> None:
    with pytest.raises(TargetNotEmptyError, match="inside the source"):
        split_dataset(tiny_dataset, tiny_dataset / "glioma" / "sites", 2)


def test_force_never_deletes_the_source(tmp_path: Path) -> None:
    source = tmp_path / "out" / "site1"
    generate_sample_dataset(source, per_class=2, image_size=16)

    with pytest.raises(TargetNotEmptyError, match="lies inside a site folder"):
        split_dataset(source, tmp_path / "out", 2, force=True)
    assert scan_dataset(source).total == 8


@pytest.mark.parametrize("sites", [["a", "a"], ["../up"], [".hidden"], []])
def test_bad_site_names(tiny_dataset: Path, tmp_path: Path, sites: list[str]) -> None:
    with pytest.raises(UsageError, match="site"):
        split_dataset(tiny_dataset, tmp_path / "out", sites)


def test_more_sites_than_images(tmp_path: Path) -> None:
    generate_sample_dataset(tmp_path / "src", per_class=1, image_size=16)
    with pytest.raises(DatasetError, match="4 images cannot give each of 5 sites"):
        split_dataset(tmp_path / "src", tmp_path / "out", 5)


# --- manifest -------------------------------------------------------------------------------------


def test_manifest_records_every_file_with_its_checksum(dataset20: Path, tmp_path: Path) -> None:
    result = split_dataset(
        dataset20, tmp_path / "out", ["x", "y"], mode="dirichlet", alpha=0.7, seed=9
    )
    manifest = json.loads(result.manifest_path.read_text())

    assert manifest["source"] == str(dataset20.resolve())
    assert (manifest["mode"], manifest["seed"]) == ("dirichlet", 9)
    assert manifest["parameters"] == {"sites": ["x", "y"], "link": "copy", "alpha": 0.7}
    assert manifest["created_at"].endswith("+00:00")
    assert manifest["counts"] == result.counts
    for site in ("x", "y"):
        entries = manifest["sites"][site]
        assert len(entries) == sum(result.counts[site].values())
        for entry in entries:
            path = tmp_path / "out" / site / entry["file"]
            assert entry["file"].startswith(entry["class"] + "/")
            assert entry["sha256"] == _sha(path)
            assert entry["size"] == path.stat().st_size


def test_verify_manifest_finds_tampering(tiny_dataset: Path, tmp_path: Path) -> None:
    result = split_dataset(tiny_dataset, tmp_path / "out", 2)
    assert verify_manifest(result.manifest_path) == []

    changed, gone = result.files["site1"]["glioma"][:2]
    changed.write_bytes(changed.read_bytes()[::-1])
    gone.unlink()
    (tmp_path / "out" / "site2" / "notumor" / "intruder.jpg").write_bytes(b"x")

    problems = verify_manifest(result.manifest_path)

    assert len(problems) == 3
    assert any(changed.name in p and "sha256" in p for p in problems)
    assert any(gone.name in p and "missing" in p for p in problems)
    assert any("intruder.jpg" in p and "not in the manifest" in p for p in problems)


def test_verify_manifest_unreadable(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match="cannot read split manifest"):
        verify_manifest(tmp_path / "manifest.json")


# --- command line ---------------------------------------------------------------------------------


def test_cli_prints_tables_and_writes_split(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tiny_dataset / "notumor" / "bad.png").write_bytes(b"garbage")
    out = tmp_path / "out"

    code = main([str(tiny_dataset), str(out), "--sites", "north,south", "--mode", "quantity",
                 "--quantities", "10,8", "--link", "hardlink", "--seed", "2"])

    printed = capsys.readouterr().out
    assert code == 0
    assert "notumor/bad.png" in printed and "Skipped 1 file" in printed
    lines = printed.splitlines()
    rows = {line.split()[1]: line for line in lines if line[2:7] in ("north", "south")}
    assert rows["north"].split()[-2] == "10" and rows["south"].split()[-2] == "8"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["quantities"] == [10, 8]
    assert [sum(manifest["counts"][s].values()) for s in ("north", "south")] == [10, 8]


def test_cli_sites_default_to_one_per_quantity(tiny_dataset: Path, tmp_path: Path) -> None:
    assert main([str(tiny_dataset), str(tmp_path / "out"), "--mode", "quantity",
                 "--quantities", "0.5,0.25,0.25"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "manifest.json", "site1", "site2", "site3"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mode", "quantity", "--quantities", "100,100"], "ask for 200 images"),
        (["--quantities", "5,5"], "only applies to --mode quantity"),
        (["--mode", "dirichlet", "--alpha", "0"], "--alpha must be positive"),
    ],
)
def test_cli_bad_arguments_exit_2_with_message(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    extra: list[str], message: str,
) -> None:
    assert main([str(tiny_dataset), str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "hint:" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_missing_source_and_non_empty_target(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main([str(tiny_dataset), str(tmp_path / "full")]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err
    assert main([str(tiny_dataset), str(tmp_path / "full"), "--force"]) == 0


def test_cli_rejects_malformed_options(tiny_dataset: Path, tmp_path: Path) -> None:
    for bad in (["--quantities", "1,x"], ["--sites", "0"], ["--mode", "random"]):
        with pytest.raises(SystemExit) as exit_info:
            main([str(tiny_dataset), str(tmp_path / "out"), *bad])
        assert exit_info.value.code == 2


@pytest.mark.parametrize("how", [["scripts/split_dataset.py"], ["-m", "scripts.split_dataset"]])
def test_runs_as_script_and_module(tiny_dataset: Path, tmp_path: Path, how: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, *how, str(tiny_dataset), str(tmp_path / "out"), "--sites", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "site1" in done.stdout and verify_manifest(tmp_path / "out" / "manifest.json") == []
