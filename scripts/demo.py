"""``make demo``: the whole service on this machine, driven by the same commands people type.

Three hospitals (north, south, east, with 5:3:4 as many images, like the 500/300/400 of the
original example) train together: one joint session gives v1; then north alone and south+east
together train at the same time from v1, so the second to finish is merged into the first's
result (asynchronous versioning). The admin releases the head, every site accepts it, and the
analyst's ``fl-history`` shows the versions, the lineage and the plots. Everything lives in
``var/demo`` (recreated on each run); the server and all children are stopped on the way out.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from scripts.demo_processes import Children, CommandFailed, find
from shared import training_defaults
from shared.program import Program
from shared.terminal import make_console, print_unwrapped

HOME = Path("var/demo")
SITES = ("north", "south", "east")
#: Images per site (500/300/400 scaled by 1/4) and a held-out set no site ever sees.
QUANTITIES = {"north": 125, "south": 75, "east": 100, "holdout": 100}
IMAGE_SIZE = 32
BACKBONE = Path(f"data/backbone/resnet50-synthetic-{IMAGE_SIZE}.h5")
PRETRAIN_SCRIPT = Path("scripts/pretrain_backbone.py")
ROUNDS = training_defaults.ROUNDS
TARGET_EPSILON = 4.0
#: Batch size, learning rate and local epochs are the service's defaults (``shared.training_defaults``).
APPROVE = ("--join-timeout", "300")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Demo:
    """The demo's state: where things are, the children it started, what it learnt on the way."""

    console: Console
    home: Path
    children: Children
    request_port: int
    backbone: Path | None = None
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.home / "data"

    def step(self, title: str, *explanation: str) -> None:
        self.console.rule(f"[bold]{title}")
        for line in explanation:
            self.console.print(line)

    def show(self, program: str, *args: str, echo: bool = True) -> str:
        """Run a command, print it as a person would type it, and (optionally) its output."""
        self.console.print(f"[cyan]$ {escape(program)} {escape(' '.join(args))}[/]", soft_wrap=True)
        out = self.children.run(program, *args)
        if echo:
            self.console.print(out.rstrip(), markup=False, highlight=False, soft_wrap=True)  # laid out already
        return out

    def show_all(self, program: str, *arg_lists: tuple[str, ...]) -> list[str]:
        """Run several invocations of ``program`` side by side; print each, then its output, in order."""
        outputs = self.children.run_all([(program, *args) for args in arg_lists])
        for args, out in zip(arg_lists, outputs):
            self.console.print(f"[cyan]$ {escape(program)} {escape(' '.join(args))}[/]", soft_wrap=True)
            self.console.print(out.rstrip(), markup=False, highlight=False, soft_wrap=True)
        return outputs


def prepare_data(demo: Demo) -> None:
    demo.step("1. Sample data", "Synthetic 32x32 brain-MRI-like images in 4 classes (not real scans), split "
              "with quantity skew: north 125, south 75, east 100 images, plus 100 held out for a final test.")
    from scripts import make_sample_data, split_dataset

    per_class = sum(QUANTITIES.values()) // 4
    make_sample_data.generate_sample_dataset(demo.data / "sample", per_class=per_class, image_size=IMAGE_SIZE,
                                             seed=0)
    quantities = ",".join(str(q) for q in QUANTITIES.values())
    code = split_dataset.main([str(demo.data / "sample"), str(demo.data / "sites"), "--sites", ",".join(QUANTITIES),
                               "--mode", "quantity", "--quantities", quantities, "--seed", "0"])
    if code:
        raise CommandFailed("splitting the sample data failed")


def prepare_backbone(demo: Demo) -> None:
    demo.step("2. Backbone", "Every site needs the same frozen ResNet50 backbone; only the classifier head trains.")
    if BACKBONE.is_file():
        print_unwrapped(demo.console, f"reusing the pretrained backbone {BACKBONE}")
    elif PRETRAIN_SCRIPT.is_file():
        demo.console.print("pretraining a stand-in for ImageNet weights on a separate synthetic corpus (~1.5 min)")
        demo.show("python -m scripts.pretrain_backbone", "--out", str(BACKBONE), "--size", str(IMAGE_SIZE))
    else:
        demo.console.print("[yellow]no pretrained backbone available: using a random one (accuracy stays near "
                           "chance)")
        return
    demo.backbone = BACKBONE.resolve()


def start_server(demo: Demo) -> None:
    demo.step("3. The server", "The admin creates the model store with v0 (the untrained model), enrols each "
              "hospital (a secret token each), and starts the server without its menu.")
    weights = ("--weights", str(demo.backbone)) if demo.backbone else ()
    demo.show("fl-server", "init", "--image-size", str(IMAGE_SIZE), *weights)
    for site in SITES:
        demo.tokens[site] = find(r"token: (\S+)", demo.show("fl-server", "enrol", site, echo=False))
        demo.console.print(f"enrolled {site} (token {demo.tokens[site][:6]}...)")
    server = demo.children.start("fl-server", "serve", "--on-exit", "stop", log_name="server.log")
    from shared.listening import wait_until_listening

    wait_until_listening("127.0.0.1", demo.request_port, timeout_s=120)
    print_unwrapped(demo.console, f"server listening on port {demo.request_port} (pid {server.pid}; log "
                                  f"{demo.children.log_dir / 'server.log'})")


def set_up_sites(demo: Demo) -> None:
    demo.step("4. The hospitals", "Each site saves its token, its image folder and its privacy budget "
              "(epsilon 10 at delta 1e-5, composed over all its training).")
    weights = ("--backbone-weights", str(demo.backbone)) if demo.backbone else ()
    for site in SITES:
        token_file = demo.home / f"{site}.token"  # as a site would keep it: owner-only, never on argv
        token_file.touch(mode=0o600)
        token_file.write_text(demo.tokens[site] + "\n")
        demo.show("fl-client", "--site", site, "setup", "--token-file", str(token_file), "--data",
                  str((demo.data / "sites" / site).resolve()), "--server", f"127.0.0.1:{demo.request_port}",
                  *weights)


def request(demo: Demo, sites: list[str]) -> dict[str, str]:
    """Each site's ``fl-client request``, side by side: each plans its privacy (PLD) for seconds."""
    outputs = demo.show_all("fl-client", *[("--site", site, "request", "--rounds", str(ROUNDS), "--target-epsilon",
                                            str(TARGET_EPSILON), "--note", "demo") for site in sites])
    return {site: find(r"sent (REQ-\d+)", out) for site, out in zip(sites, outputs)}


def train_sessions(demo: Demo, groups: list[tuple[str, ...]]) -> None:
    """Each group is approved into one session; every site trains in its own process meanwhile."""
    requests = request(demo, [site for group in groups for site in group])
    trainers = [(site, demo.children.start("fl-client", "--site", site, "train", requests[site],
                                           log_name=f"{site}-{requests[site]}.log")) for site in requests]
    demo.console.print("the sites wait for the admin's decision (fl-client --site NAME train REQ-n)")
    for group in groups:
        demo.show("fl-server", "approve", *(requests[s] for s in group), "--rounds", str(ROUNDS), *APPROVE)
    started = time.monotonic()
    with demo.console.status("training (DP-SGD on each site, FedProx rounds on the server) ..."):
        for site, trainer in trainers:
            demo.children.wait(trainer, f"{site}'s training", timeout=900)
    demo.console.print(f"all sessions finished in {time.monotonic() - started:.0f} s")
    demo.show("fl-server", "sessions")


def first_session(demo: Demo) -> None:
    demo.step("5. A joint session", f"Each site asks to train ({ROUNDS} rounds, target epsilon {TARGET_EPSILON:g}); "
              "the admin approves the three requests into one session. Its result becomes v1.")
    train_sessions(demo, [SITES])


def concurrent_sessions(demo: Demo) -> None:
    demo.step("6. Two sessions at once", "North trains alone while south and east train together, both from "
              "v1. The first to finish becomes v2; the other finds the head moved and is merged into it "
              "(FedAsync: weight shrinks with staleness) as v3.")
    train_sessions(demo, [(SITES[0],), SITES[1:]])


def release_and_accept(demo: Demo) -> None:
    head = _head_number(demo)
    demo.step("7. Release and accept", f"The admin releases v{head} to every site; each site downloads it, "
              "checks its sha256 and saves it as <site>_FinalGlobal_vN.h5.")
    demo.show("fl-server", "export", f"v{head}", "--sites", ",".join(SITES))
    accepts = [(site, demo.children.start("fl-client", "--site", site, "accept", f"v{head}",
                                          log_name=f"{site}-accept.log")) for site in SITES]
    for site, process in accepts:
        demo.children.wait(process, f"{site} accepting v{head}", timeout=300)
        demo.console.print(f"{site} accepted v{head}")


def _head_number(demo: Demo) -> int:
    from server.store import Store
    from shared.settings import load_settings

    store = Store.open(load_settings(home=demo.home), readonly=True)
    try:
        return store.head().number
    finally:
        store.close()


def analyse(demo: Demo) -> None:
    demo.step("8. The analyst's view", "fl-history opens the store read-only: versions, lineage (merges with "
              "their weight), and plots.")
    demo.show("fl-history", "versions")
    demo.show("fl-history", "lineage")
    demo.show("fl-history", "plot", "--out", str(demo.home / "plots"))


def holdout_accuracy(demo: Demo) -> dict[str, float]:
    """Every version on the 100 held-out images no site trained on, beside the accuracy the store
    recorded for it: the sites' validation splits scored inside a secure session's masked sum, on
    the version's own weights (merged ones for a merge), or "not evaluated"."""
    demo.step("9. Final accuracy per version", "Each version's weights classify the 100 held-out images "
              "(25 per class, so chance is 25%).")
    from client.menu.evaluation import evaluate_weights
    from server.history.queries import validation_accuracy
    from server.store import Store
    from shared.settings import load_settings

    store = Store.open(load_settings(home=demo.home), readonly=True)
    accuracy: dict[str, float] = {}
    try:
        for v in store.list_versions():
            result = evaluate_weights(v.number, v.path, v.sha256, v.metadata["model"], demo.data / "sites" / "holdout",
                                      backbone_weights=demo.backbone)
            recorded = validation_accuracy(v)
            accuracy[v.label] = result.accuracy
            demo.console.print(f"{v.label:>4} {v.kind:<8} held-out accuracy {result.accuracy:6.1%}   (sites' "
                               + ("validation splits: not evaluated)" if recorded is None
                                  else f"validation splits: {recorded:.1%})"))
    finally:
        store.close()
    return accuracy


def stop_server(demo: Demo) -> None:
    demo.step("10. Stop", "The server stops cleanly (SIGTERM, as Ctrl-C would).")
    demo.children.stop_all()
    demo.console.print("server stopped; no demo process is left running")


def next_steps(demo: Demo, seconds: float, accuracy: dict[str, float]) -> None:
    home = HOME
    head = list(accuracy)[-1]
    demo.console.rule(f"[bold green]Demo finished in {seconds / 60:.1f} min")
    demo.console.print(f"The head is {head}: {accuracy[head]:.1%} on the held-out images (chance: 25%); "
                       f"best version {max(accuracy, key=accuracy.__getitem__)} at {max(accuracy.values()):.1%}.")
    demo.console.print(
        "Where to go next (all against this demo's data):\n"
        f"  FL_HOME={home} fl-history                  browse the history interactively\n"
        f"  FL_HOME={home} fl-history compare v2 v3    metrics, privacy and weight distance of two versions\n"
        f"  FL_HOME={home} fl-history sites            what each hospital contributed, epsilon over time\n"
        f"  FL_HOME={home} fl-server                   the admin console (approve, watch, export, roll back)\n"
        f"  FL_HOME={home} fl-client --site north      a hospital's menu (requests, updates, privacy)\n"
        f"Plots: {home / 'plots'}; logs: {home / 'logs'}. The fl-* commands are in .venv/bin.",
        markup=False, soft_wrap=True)
    demo.console.print(f"Open the dashboard (then http://127.0.0.1:8050/ in a browser):\n"
                       f"  FL_HOME={home} .venv/bin/fl-history web", markup=False, soft_wrap=True)


def run(demo: Demo) -> None:
    started = time.monotonic()
    prepare_data(demo)
    prepare_backbone(demo)
    start_server(demo)
    set_up_sites(demo)
    first_session(demo)
    concurrent_sessions(demo)
    release_and_accept(demo)
    analyse(demo)
    accuracy = holdout_accuracy(demo)
    stop_server(demo)
    next_steps(demo, time.monotonic() - started, accuracy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo", description="The whole service on this machine (make demo).")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' messages too")
    program = Program(make_console(), verbose=parser.parse_args(argv).verbose)
    return program.run(lambda: _run_demo(program))


def _run_demo(program: Program) -> int:
    console = program.console
    shutil.rmtree(HOME, ignore_errors=True)
    program.log_to(HOME.resolve() / "logs" / "demo.log", level="WARNING")  # the held-out evaluation loads TensorFlow
    port = _free_port()
    env = {"FL_HOME": str(HOME.resolve()), "FL_REQUEST_PORT": str(port), "FL_SESSION_PORT_START": str(_free_port()),
           "FL_SESSION_PORT_COUNT": "4", "FL_IMAGE_SIZE": str(IMAGE_SIZE), "FL_LOG_LEVEL": "WARNING"}
    demo = Demo(console, HOME.resolve(), Children(env, HOME.resolve() / "logs", columns=console.width), port)
    try:
        run(demo)
        return 0
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted: stopping the server and the sites ...")
        return 130
    except CommandFailed as error:
        console.print("[red]demo failed:[/] ", end="", markup=True)
        console.print(str(error), markup=False)
        return 1
    finally:
        demo.children.stop_all()


if __name__ == "__main__":
    sys.exit(main())
