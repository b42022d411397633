"""Privacy-utility study: one federation trained at epsilon 1, 2, 4, 8 and without DP, plus a centralised row.

Every level is the same federation (same three sites and images, same rounds, local epochs, batch
size and learning rate, same v0) run through the real system: request socket and session manager
in this process, a Flower session process, and one ``fl-client --site X train REQ`` process per
site. Each level gets a fresh home (store and privacy ledgers), so no level's spend limits
another's. The epsilons are the honest ones: the server calibrates each site's noise with the PLD
accountant for the Poisson-sampled schedule it approves, and the table shows what its ledger
charged. The hyperparameters default to the service's own (``ApprovalOptions``, the request's
local epochs and rounds), so the study measures what a consortium gets out of the box.

"No DP" is an explicit path, never a default: the admin enrols the sites with ``allow_no_dp`` and
they request ``noise_multiplier: 0`` (per-example clipping stays, no noise, epsilon = infinity).
"Centralised" is the ceiling the federation is measured against: all sites' training images
pooled in one place, one trainer (``train_dp`` with noise 0 and the same clip, batch, learning
rate and rounds x local epochs of expected passes), the same backbone; no sessions involved.

Sessions send no validation metrics in the clear, so each row's final weights are scored on
held-out images no site saw. Prints a table of that accuracy, the noise the server chose and
the epsilon its ledger charged per level, writes ``privacy_utility.json`` (for
``fl-history plot --study``) and ``privacy_utility.png``, the total time, and ends with
``privacy_utility_acc_eps8 X``.

    python -m bench.privacy_utility [--out var/bench/privacy_utility] [--levels 1,2,4,8,none]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from client.menu.actions import request_training, setup_site  # noqa: E402
from scripts.make_sample_data import generate_sample_dataset  # noqa: E402
from scripts.split_dataset import split_dataset  # noqa: E402
from server.history.plots import privacy_utility_figure, save  # noqa: E402
from server.sessions.initial_model import ensure_initial_version  # noqa: E402
from server.sessions.manager import ApprovalOptions, SessionManager  # noqa: E402
from server.socket.request_socket import RequestServerThread  # noqa: E402
from server.store import Store  # noqa: E402
from server.store.lifecycle import SessionState  # noqa: E402
from shared import training_defaults  # noqa: E402
from shared.logging_setup import quiet_script  # noqa: E402
from shared.settings import Settings, load_settings  # noqa: E402

LEVELS: tuple[float | None, ...] = (1.0, 2.0, 4.0, 8.0, None)  # None: no DP
QUANTITIES = {"north": 125, "south": 75, "east": 100, "holdout": 200}
SITES = ("north", "south", "east")
IMAGE_SIZE = 32
DELTA = 1e-5
BACKBONE = Path(f"data/backbone/resnet50-synthetic-{IMAGE_SIZE}.h5")
DEFAULTS = ApprovalOptions()
CENTRALISED = "centralised, no DP"


@dataclass(frozen=True)
class LevelResult:
    epsilon: float | None  # the target per site; None = no DP
    label: str
    accuracy: float  # the final weights on the held-out images
    noise_multiplier: float  # as the server calibrated it (the largest of the three sites)
    spent: dict[str, float | None]  # epsilon the server's ledger charged each site (None: no finite epsilon)
    seconds: float


def _snapshot(backbone: Path, out: Path) -> Path:
    """A private copy: every level must see the same backbone even if the file is re-made meanwhile."""
    copy = out / "backbone.h5"
    shutil.copyfile(backbone, copy)
    return copy.resolve()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _label(epsilon: float | None) -> str:
    return "no DP (noise 0)" if epsilon is None else f"epsilon {epsilon:g}"


def _dp(epsilon: float | None, clip: float) -> dict[str, float]:
    if epsilon is None:
        return {"noise_multiplier": 0.0, "delta": DELTA, "l2_norm_clip": clip}
    return {"target_epsilon": epsilon, "delta": DELTA, "l2_norm_clip": clip}


def prepare_data(root: Path) -> Path:
    """One dataset, split once with quantity skew; every level trains on exactly these folders."""
    generate_sample_dataset(root / "sample", per_class=sum(QUANTITIES.values()) // 4, image_size=IMAGE_SIZE, seed=0)
    split_dataset(root / "sample", root / "sites", list(QUANTITIES), mode="quantity",
                  quantities=list(QUANTITIES.values()), seed=0)
    return root / "sites"


def _train(settings: Settings, site: str, request: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings.as_environment(), "FL_LOG_LEVEL": "WARNING", "TF_CPP_MIN_LOG_LEVEL": "3"}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "client.menu.cli", "--site", site, "train", request],
                                env=env, stdout=out, stderr=subprocess.STDOUT)


def run_level(epsilon: float | None, home: Path, sites_root: Path, args: argparse.Namespace,
              backbone: Path | None) -> tuple[Store, int, float]:
    """Train one federation at ``epsilon``; returns its store, the version and the seconds it took."""
    started = time.monotonic()
    settings = load_settings(home=home, request_port=0, session_port_start=_free_port(), session_port_count=2,
                             image_size=IMAGE_SIZE, log_level="WARNING")
    store = Store.open(settings)
    ensure_initial_version(store, image_size=IMAGE_SIZE, seed=0, weights=backbone)
    tokens = {site: store.enrol_site(site, allow_no_dp=epsilon is None) for site in SITES}
    manager = SessionManager(store, settings, poll_interval_s=0.2)
    manager.start()
    trainers: list[subprocess.Popen[bytes]] = []
    try:
        with RequestServerThread(store, settings) as server:
            requests = {}
            for site in SITES:
                profile = setup_site(settings, site=site, token=tokens[site], data_root=sites_root / site,
                                     server_port=server.port, backbone_weights=backbone)
                requests[site] = request_training(profile, rounds=args.rounds, local_epochs=args.local_epochs,
                                                  dp=_dp(epsilon, args.clip), note=_label(epsilon)).label
            trainers += [_train(settings, s, r, home / f"{s}.log") for s, r in requests.items()]
            session = manager.approve(list(requests.values()), ApprovalOptions(
                rounds=args.rounds, local_epochs=args.local_epochs, batch_size=args.batch_size,
                learning_rate=args.lr, join_timeout_s=300))
            final = manager.wait(session.id, timeout_s=1200)
            for trainer in trainers:
                trainer.wait(timeout=300)
    finally:
        for trainer in trainers:  # on failure or Ctrl-C: no site process outlives this one
            if trainer.poll() is None:
                trainer.terminate()
                trainer.wait(timeout=30)
        manager.shutdown(stop_running=True)
    if final.state != SessionState.COMPLETED:
        raise RuntimeError(f"{_label(epsilon)}: session {final.id} {final.state.value}: {final.reason} "
                           f"(logs in {home})")
    return store, final.version_number, time.monotonic() - started


def holdout_accuracy(store: Store, number: int, holdout: Path, backbone: Path | None) -> float:
    from client.menu.evaluation import evaluate_weights

    v = store.get_version(number)
    return evaluate_weights(v.number, v.path, v.sha256, v.metadata["model"], holdout,
                            backbone_weights=backbone).accuracy


def level_result(epsilon: float | None, store: Store, number: int, seconds: float, holdout: float) -> LevelResult:
    v = store.get_version(number)
    noise = max(float(report.get("noise_multiplier") or 0.0) for report in v.dp_summary.values())
    return LevelResult(epsilon, _label(epsilon), holdout, noise,
                       {site: report.get("epsilon") for site, report in sorted(v.dp_summary.items())}, seconds)


def centralised_result(sites_root: Path, backbone: Path | None, args: argparse.Namespace) -> LevelResult:
    """All sites' training images pooled, one trainer (``train_dp``, noise 0), scored on the held-out images."""
    from client.menu.evaluation import read_labelled_images
    from client.training.data import load_site_data
    from client.training.dp_training import LocalSettings, train_dp
    from client.training.examples import TrainingExamples
    from client.training.feature_cache import compute_features
    from shared.classifier import build_classifier
    from shared.privacy_accounting import DpSchedule

    started = time.monotonic()
    classifier = build_classifier(IMAGE_SIZE, weights=backbone, seed=0)
    xs, ys = [], []
    for site in SITES:  # each site's own training split, as its client draws it
        data = load_site_data(sites_root / site, image_size=IMAGE_SIZE, seed=0)
        xs.append(compute_features(classifier.features, data)[data.train_index])
        ys.append(data.labels[data.train_index])
    x, y = np.concatenate(xs), np.concatenate(ys)
    schedule = DpSchedule.for_epochs(noise_multiplier=0.0, l2_norm_clip=args.clip, examples=len(y),
                                     batch_size=args.batch_size, epochs=args.rounds * args.local_epochs)
    train_dp(classifier.head, TrainingExamples.from_arrays(x, y), schedule, LocalSettings(learning_rate=args.lr))
    holdout = read_labelled_images(sites_root / "holdout", IMAGE_SIZE)
    predicted = np.argmax(classifier.head.predict(compute_features(classifier.features, holdout), verbose=0), axis=1)
    return LevelResult(None, CENTRALISED, float(np.mean(predicted == holdout.labels)), 0.0, {},
                       time.monotonic() - started)


def results_table(results: list[LevelResult]) -> Table:
    table = Table(title="Privacy-utility: final accuracy per privacy level", title_justify="left")
    for column in ("privacy (per site)", "noise mult.", "eps spent (max site)", "held-out acc", "time"):
        table.add_column(column, justify="left" if column.startswith("privacy") else "right")
    for r in results:
        spent = [e for e in r.spent.values() if e is not None]
        table.add_row(r.label, f"{r.noise_multiplier:.3f}", f"{max(spent):.2f}" if spent else "inf",
                      f"{r.accuracy:.1%}", f"{r.seconds:.0f} s")
    return table


def _levels(text: str) -> tuple[float | None, ...]:
    """``0.5,8,none`` -> ``(0.5, 8.0, None)``."""
    return tuple(None if part.strip().lower() == "none" else float(part) for part in text.split(","))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("var/bench/privacy_utility"))
    parser.add_argument("--levels", type=_levels, default=LEVELS, help="target epsilons; 'none' = no DP")
    parser.add_argument("--backbone", type=Path, default=BACKBONE,
                        help="local ResNet50 weights (scripts/pretrain_backbone.py); random if missing")
    parser.add_argument("--rounds", type=int, default=training_defaults.ROUNDS)
    parser.add_argument("--local-epochs", type=int, default=training_defaults.LOCAL_EPOCHS)
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    parser.add_argument("--lr", type=float, default=DEFAULTS.learning_rate)
    parser.add_argument("--clip", type=float, default=training_defaults.L2_NORM_CLIP)
    parser.add_argument("--no-centralised", dest="centralised", action="store_false",
                        help="leave out the centralised (pooled data) row")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet_script(__file__)  # library and TensorFlow start-up lines go to the log file, not here
    console = Console(highlight=False)
    started = time.monotonic()
    shutil.rmtree(args.out, ignore_errors=True)
    sites_root = prepare_data(args.out / "data")
    args.out.mkdir(parents=True, exist_ok=True)
    backbone = _snapshot(args.backbone, args.out) if args.backbone.is_file() else None
    console.print(f"backbone: {backbone or 'random (no pretrained file; expect near-chance accuracy)'}")
    results = []
    for epsilon in args.levels:
        home = args.out / ("no-dp" if epsilon is None else f"eps-{epsilon:g}")
        store, number, seconds = run_level(epsilon, home, sites_root, args, backbone)
        try:
            held = holdout_accuracy(store, number, sites_root / "holdout", backbone)
            results.append(level_result(epsilon, store, number, seconds, held))
        finally:
            store.close()
        console.print(f"{_label(epsilon)}: held-out acc {results[-1].accuracy:.1%} ({seconds:.0f} s)")
    if args.centralised:
        results.append(centralised_result(sites_root, backbone, args))
        console.print(f"{CENTRALISED}: held-out acc {results[-1].accuracy:.1%} ({results[-1].seconds:.0f} s)")
    total = time.monotonic() - started
    hyper = {k: v for k, v in vars(args).items() if k not in ("out", "levels", "backbone", "centralised")}
    study = {"rows": [asdict(r) for r in results], "chance": 0.25, "total_seconds": total,
             "config": {**hyper, "sites": QUANTITIES, "image_size": IMAGE_SIZE, "delta": DELTA,
                        "backbone": str(backbone) if backbone else None}}
    (args.out / "privacy_utility.json").write_text(json.dumps(study, indent=2) + "\n", encoding="utf-8")
    save(privacy_utility_figure(study), args.out / "privacy_utility.png")
    console.print(results_table(results))
    console.print(f"wrote {args.out / 'privacy_utility.json'} and {args.out / 'privacy_utility.png'}; "
                  f"total {total / 60:.1f} min")
    headline = max(results, key=lambda r: (r.epsilon is not None, r.epsilon or 0))  # epsilon 8 by default
    name = "nodp" if headline.epsilon is None else f"eps{headline.epsilon:g}".replace(".", "_")
    print(f"privacy_utility_acc_{name} {headline.accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
