"""The synthetic dataset: real layout, reproducible by seed, learnable but not trivial."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts.make_sample_data import generate_sample_dataset, main
from shared.dataset_layout import CLASS_NAMES, scan_dataset
from shared.errors import TargetNotEmptyError

REPO = Path(__file__).resolve().parent.parent


def _digests(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*.jpg"))
    }


def test_layout_counts_and_image_format(tmp_path: Path) -> None:
    counts = generate_sample_dataset(tmp_path / "s", per_class=3, image_size=40, seed=1)

    assert counts == {name: 3 for name in CLASS_NAMES}
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(CLASS_NAMES)
    scan = scan_dataset(tmp_path / "s")
    assert scan.counts == counts and scan.skipped == []
    for paths in scan.images.values():
        for path in paths:
            with Image.open(path) as image:
                assert (image.format, image.mode, image.size) == ("JPEG", "L", (40, 40))


def test_images_look_like_a_head_on_a_dark_background(tmp_path: Path) -> None:
    generate_sample_dataset(tmp_path, per_class=2, image_size=64, seed=0)
    for path in tmp_path.rglob("*.jpg"):
        pixels = np.asarray(Image.open(path), dtype=float)
        corners = np.concatenate([pixels[:4, :4].ravel(), pixels[-4:, -4:].ravel()])
        assert corners.mean() < 40 < pixels[24:40, 24:40].mean()


def test_same_seed_gives_identical_bytes_other_seed_differs(tmp_path: Path) -> None:
    generate_sample_dataset(tmp_path / "a", per_class=3, image_size=32, seed=7)
    generate_sample_dataset(tmp_path / "b", per_class=3, image_size=32, seed=7)
    generate_sample_dataset(tmp_path / "c", per_class=3, image_size=32, seed=8)

    a, b, c = (_digests(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[name] != c[name] for name in a)


def test_an_image_does_not_depend_on_how_many_are_made(tmp_path: Path) -> None:
    generate_sample_dataset(tmp_path / "few", per_class=2, image_size=32, seed=3)
    generate_sample_dataset(tmp_path / "many", per_class=5, image_size=32, seed=3)

    few, many = _digests(tmp_path / "few"), _digests(tmp_path / "many")
    assert few == {name: many[name] for name in few}


def test_refuses_non_empty_folder_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "s"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (out / "glioma").mkdir()
    (out / "glioma" / "old.jpg").write_bytes(b"old")

    with pytest.raises(TargetNotEmptyError):
        generate_sample_dataset(out, per_class=1, image_size=32)
    assert (out / "glioma" / "old.jpg").exists()

    generate_sample_dataset(out, per_class=1, image_size=32, force=True)
    assert not (out / "glioma" / "old.jpg").exists()
    assert (out / "keep.txt").read_text() == "mine"
    assert scan_dataset(out).total == 4


def test_cli_writes_dataset_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["--per-class", "2", "--size", "32", "--seed", "4", "--out", str(out)]) == 0
    assert f"wrote 8 synthetic 32px images to {out}" in capsys.readouterr().out
    assert scan_dataset(out).counts == {name: 2 for name in CLASS_NAMES}


def test_cli_non_empty_target_exits_2_with_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.txt").write_text("x")
    assert main(["--per-class", "1", "--size", "32", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "not empty" in err and "--force" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("bad", [["--per-class", "0"], ["--size", "8"], ["--seed", "-1"]])
def test_cli_rejects_bad_numbers(bad: list[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*bad, "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert not (tmp_path / "o").exists()


def test_runs_as_a_script_file(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "scripts/make_sample_data.py", "--per-class", "1", "--size", "32",
         "--out", str(tmp_path / "s")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert scan_dataset(tmp_path / "s").total == 4


def test_pixel_logistic_regression_is_above_chance_but_far_from_perfect(tmp_path: Path) -> None:
    """Learnable (raw-pixel logistic regression beats 25%) but not trivial (far below 100%)."""
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    generate_sample_dataset(tmp_path, per_class=100, image_size=32, seed=0)
    scan = scan_dataset(tmp_path)
    pixels = np.array([
        np.asarray(Image.open(path), dtype=np.float32).ravel() / 255.0
        for name in CLASS_NAMES for path in scan.images[name]
    ])
    labels = np.repeat(np.arange(len(CLASS_NAMES)), 100)
    x_train, x_test, y_train, y_test = train_test_split(
        pixels, labels, test_size=0.25, stratify=labels, random_state=0
    )
    model = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    accuracy = model.score(x_test, y_test)

    assert 0.35 < accuracy < 0.85, f"pixel logistic regression accuracy {accuracy:.2f}"
