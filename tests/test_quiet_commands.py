"""The real commands, captured as a script (or a person's pipe) gets them: only our own lines.

One story with real parts (request socket and store in this process; ``fl-server approve``,
``fl-client train``, ``accept`` and ``evaluate`` as subprocesses, TensorFlow included, with no
``TF_CPP_MIN_LOG_LEVEL`` set by the test): no TensorFlow, absl, Keras or Flower line reaches
the output, the progress of each long step does, and the libraries' lines are in the log file.
The hospital then evaluates the version on a folder of scans of every kind, with and without a
set-up site.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client.menu.actions import request_training, setup_site
from client.site_profile import load_profile
from scripts.make_sample_data import generate_sample_dataset
from server.sessions.initial_model import ensure_initial_version
from server.sessions.manager import SessionManager
from server.socket.request_socket import RequestServerThread
from server.store import Store
from server.store.lifecycle import SessionState
from shared.settings import Settings, load_settings
from tests.flower_fakes import free_port
from tests.output_checks import library_lines

pytestmark = pytest.mark.slow

DP = {"noise_multiplier": 1.0, "delta": 1e-5, "l2_norm_clip": 1.0}


@dataclass
class World:
    settings: Settings
    store: Store
    root: Path
    env: dict[str, str]
    port: int
    token: str

    def run(self, module: str, *args: str, timeout: float = 600) -> str:
        """A command as a script captures it (stdout and stderr together); it must succeed."""
        done = subprocess.run([sys.executable, "-m", module, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        out = done.stdout + done.stderr
        assert done.returncode == 0, out
        return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("quiet")
    settings = load_settings(home=root / "home", request_port=0, session_port_start=free_port(), image_size=32)
    generate_sample_dataset(root / "north-data", per_class=6, image_size=32, seed=2)
    store = Store.open(settings)
    ensure_initial_version(store, image_size=32)
    token = store.enrol_site("north")
    with RequestServerThread(store, settings) as server:
        setup_site(settings, site="north", token=token, data_root=root / "north-data", server_port=server.port)
        env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "FL_LOG_LEVEL", "COLUMNS")}
        env.update(settings.as_environment(), FL_REQUEST_PORT=str(server.port), FL_LOG_LEVEL="INFO")
        yield World(settings, store, root, env, server.port, token)
    store.close()


def write_mixed_scans(root: Path) -> Path:
    """Scans as hospitals have them: 200-700 px, not square, RGB and grayscale, JPEG and PNG,
    no notumor folder, plus a truncated JPEG and a stray text file."""
    rng = np.random.default_rng(5)
    kinds = [("glioma", 230, "L", "JPEG"), ("glioma", 591, "RGB", "PNG"), ("meningioma", 412, "RGB", "JPEG"),
             ("meningioma", 700, "L", "PNG"), ("pituitary", 200, "RGB", "JPEG"), ("pituitary", 650, "L", "PNG")]
    for index, (name, size, mode, kind) in enumerate(kinds):
        (root / name).mkdir(parents=True, exist_ok=True)
        shape = (int(size * 0.92), size) + ((3,) if mode == "RGB" else ())
        image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)
        image.save(root / name / f"scan-{index}.{'jpg' if kind == 'JPEG' else 'png'}", kind)
    whole = (root / "glioma" / "scan-0.jpg").read_bytes()
    (root / "glioma" / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (root / "pituitary" / "README.txt").write_text("slices from the March study")
    return root


def confusion(out: str) -> dict[str, list[int]]:
    rows = re.findall(r"^│(\w+)\s*│\s*(\d+)\s*│\s*(\d+)\s*│\s*(\d+)\s*│\s*(\d+)\s*│", out, re.MULTILINE)
    return {row[0]: [int(n) for n in row[1:]] for row in rows}


def assert_quiet(out: str) -> None:
    assert not library_lines(out), f"library lines reached the output: {library_lines(out)}"


@pytest.fixture(scope="module")
def trained(world: World) -> dict[str, str]:
    """North asks, the admin approves, north trains and accepts v1: each command's output."""
    profile = load_profile(world.settings, "north")
    request = request_training(profile, rounds=1, local_epochs=1, dp=DP, note="quiet").label
    outputs = {"approve": world.run("server.console.cli", "approve", request, "--rounds", "1", "--batch-size", "8",
                                    "--join-timeout", "300")}
    outputs["train"] = world.run("client.menu.cli", "--site", "north", "train", request)
    assert SessionManager(world.store, world.settings).wait(1, timeout_s=300).state == SessionState.COMPLETED
    world.store.export_version(1, ["north"])
    outputs["accept"] = world.run("client.menu.cli", "--site", "north", "accept", "v1")
    return outputs


def test_approve_train_and_accept_print_only_our_own_lines(world: World, trained: dict[str, str]) -> None:
    for out in trained.values():
        print("=====\n" + out)
        assert_quiet(out)
    assert "approved into session 1 on port" in trained["approve"] and "session-1.log" in trained["approve"]
    for line in ("approved: session 1", "backbone features: 1/1 batches", "round 1 epoch 1: loss",
                 "session 1 finished"):
        assert line in trained["train"]
    models = world.settings.site_dir("north") / "models"
    assert re.search(r"^downloading v1: \d+\.\d/\d+\.\d MB$", trained["accept"], re.MULTILINE)
    assert f"saved {models / 'north_FinalGlobal_v1.h5'} (sha256 verified)" in trained["accept"]
    log = (world.settings.site_dir("north") / "fl-client.log").read_text()
    assert re.search(r"tensorflow|xla", log), "TensorFlow's own lines are in the site's log file"


def test_a_version_is_evaluated_on_any_mix_of_scans(world: World, trained: dict[str, str]) -> None:
    scans = write_mixed_scans(world.root / "scans")
    out = world.run("client.menu.cli", "--site", "north", "evaluate", "v1", "--data", str(scans))
    assert_quiet(out)
    assert f"v1 on 6 images in {scans}: accuracy" in out
    assert "2 file(s) skipped:" in out and "  pituitary/README.txt: not an image file (.txt)" in out
    assert "  glioma/truncated.jpg: unreadable image" in out
    matrix = confusion(out)
    assert [sum(matrix[name]) for name in ("glioma", "meningioma", "notumor", "pituitary")] == [2, 2, 0, 2]
    assert re.search(r"^│notumor .*no images", out, re.MULTILINE)
    assert re.search(r"^reading images: 6/6 images$", out, re.MULTILINE)


def test_a_saved_model_file_is_evaluated_without_any_site(world: World, trained: dict[str, str]) -> None:
    """Same weights, same images: the .h5 file without a site gives the version's own result."""
    h5 = world.settings.site_dir("north") / "models" / "north_FinalGlobal_v1.h5"
    scans = write_mixed_scans(world.root / "scans-2")
    stranger = {**world.env, "FL_HOME": str(world.root / "stranger")}  # no site, no store, no server
    done = subprocess.run([sys.executable, "-m", "client.menu.cli", "evaluate", str(h5), "--data", str(scans)],
                          env=stranger, capture_output=True, text=True, timeout=600, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert_quiet(out)
    assert f"north_FinalGlobal_v1.h5 on 6 images in {scans}: accuracy" in out
    by_version = world.run("client.menu.cli", "--site", "north", "evaluate", "v1", "--data", str(scans))
    assert confusion(out) == confusion(by_version) and len(confusion(out)) == 4
    assert not (world.root / "stranger" / "sites").exists()
