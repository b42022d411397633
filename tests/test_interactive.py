"""The real ``fl-server`` console and ``fl-client`` menus, driven through pseudo-terminals (pexpect).

One story, in order: the admin enrols two sites; each hospital sets itself up from its menu,
sends a request and waits to train; the admin approves both into one session; both train
(tiny images, one round) and accept and evaluate v1; a rejection's reason reaches the site;
a wrong token and an unreachable server are named in words. Then the admin exits while a
session runs: once waiting for it, once stopping it, and nothing is left behind.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from scripts.make_sample_data import generate_sample_dataset
from scripts.split_dataset import split_dataset
from server.sessions.manager import SessionManager, session_process_alive
from server.store import Store
from server.store.lifecycle import SessionState
from shared.settings import load_settings
from tests.conftest_store import make_weights
from tests.flower_fakes import free_port
from tests.privacy_fixtures import declaration

pytestmark = [pytest.mark.interactive, pytest.mark.slow]

SITES = ("north", "south")
#: A fresh select prompt (an answered one shows the choice instead of the instruction).
MENU = re.compile(r"What next\?\s*(\x1b\[[0-9;?]*[A-Za-z])*\s*\(Use shortcuts")
CLEAR = "\x15"  # Ctrl-U: empty a text prompt's default
DOWN = "\x1b[B"
TRAINING_S = 300


def loose(text: str) -> re.Pattern[str]:
    return re.compile(r"(?:\x1b\[[0-9;?]*[A-Za-z]|\s)+".join(re.escape(word) for word in text.split()))


class Term:
    """One program in a pty; ``pick`` a menu item by its shortcut, ``answer`` a prompt."""

    def __init__(self, module: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.child = pexpect.spawn(sys.executable, ["-m", module, *args], env=env, dimensions=(50, 160),
                                   encoding="utf-8", codec_errors="replace", timeout=60)
        self.child.logfile_read = log.open("w", encoding="utf-8")

    def expect(self, text: str, timeout: float = 60) -> None:
        """``text`` literally, except that styling codes may sit between its words."""
        self.child.expect(loose(text), timeout=timeout)

    def expect_re(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        self.child.expect(pattern, timeout=timeout)
        return self.child.match

    def menu_ready(self, timeout: float = 60) -> None:
        self.child.expect(MENU, timeout=timeout)

    def pick(self, key: str) -> None:
        self.menu_ready()
        self.child.send(key)
        self.child.send("\r")

    def answer(self, prompt: str, text: str = "", *, replace: bool = False) -> None:
        self.expect(prompt)
        self.child.send((CLEAR if replace else "") + text + "\r")

    def finish(self, timeout: float = 30) -> int:
        self.child.expect(pexpect.EOF, timeout=timeout)
        self.child.close()
        return self.child.exitstatus

    def stop(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("interactive")
    generate_sample_dataset(root / "sample", per_class=16, image_size=32, seed=1)
    split_dataset(root / "sample", root / "sites", list(SITES), mode="iid", seed=1)
    base = {**os.environ, "FL_IMAGE_SIZE": "32", "FL_LOG_LEVEL": "WARNING", "FL_REQUEST_PORT": str(free_port()),
            "FL_SESSION_PORT_START": str(free_port()), "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1",
            "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
    terms: list[Term] = []

    def spawn(module: str, args: list[str], home: str, name: str) -> Term:
        term = Term(module, args, {**base, "FL_HOME": str(root / home)}, root / f"{name}.log")
        terms.append(term)
        return term

    yield {"root": root, "env": base, "spawn": spawn}
    for term in terms:
        term.stop()


def _enrol(admin: Term, site: str) -> str:
    admin.pick("e")
    admin.answer("Site name", site)
    admin.answer("max epsilon")
    admin.answer("delta")
    return admin.expect_re(r"token: (\S+)").group(1)


def _set_up(client: Term, token: str, data: Path) -> None:
    client.expect("is not set up on this machine")
    client.answer("Enrolment token", token)
    client.answer("Data folder", str(data))
    client.answer("Server (host:port)")
    client.answer("max epsilon")
    client.expect("set up: data")


def _request(client: Term, note: str) -> None:
    client.pick("1")
    client.expect("Privacy budget")
    client.answer("Rounds", "1", replace=True)
    client.answer("Local epochs")
    client.answer("Privacy")  # target epsilon (the first choice), then its default 1.0
    client.answer("Target epsilon")
    client.answer("Note for the admin", note)
    client.expect_re(r"sent REQ-\d+")


def _expect_all(waits: dict[Term, list[str]], timeout: float) -> None:
    """Each term's texts in order, reading every term meanwhile: a live display writing to a pty
    nobody reads would block on a full buffer (and stall the whole joint session)."""
    pending = {term: list(texts) for term, texts in waits.items()}
    deadline = time.monotonic() + timeout
    while any(pending.values()):
        assert time.monotonic() < deadline, f"still waiting for {[t for t in pending.values() if t]}"
        for term, texts in pending.items():
            if not texts:
                term.child.expect([pexpect.TIMEOUT], timeout=0.2)  # just drain it
                continue
            try:
                term.child.expect(loose(texts[0]), timeout=0.2)
                texts.pop(0)
            except pexpect.TIMEOUT:
                pass


def _await_notice(admin: Term, notice: str, attempts: int = 30) -> None:
    """Notices print before the next menu prompt; show the pending requests until it comes."""
    for _ in range(attempts):
        admin.pick("1")
        try:
            admin.expect(notice, timeout=1)
            return
        except pexpect.TIMEOUT:
            pass
    raise AssertionError(f"no {notice!r} in the admin console")


def test_admin_and_two_hospitals_through_their_menus(world: dict) -> None:
    root, spawn = world["root"], world["spawn"]
    admin = spawn("server.console.cli", [], "server", "admin")
    admin.expect("request socket on", timeout=180)  # after building v0 (TensorFlow)
    tokens = {site: _enrol(admin, site) for site in SITES}

    clients = {site: spawn("client.menu.cli", ["--site", site], "clients", site) for site in SITES}
    for site, client in clients.items():
        _set_up(client, tokens[site], root / "sites" / site)
        _request(client, f"joint run {site}")
        client.pick("3")
        client.answer("Train for which request")
        client.expect_re(r"waiting for approval of REQ-\d")

    admin.pick("3")  # Ctrl-C inside a dialog goes back to the menu, nothing changes
    admin.expect("Reject which request")
    admin.child.sendintr()
    admin.expect("cancelled; back to the menu")
    admin.expect("notice: new request REQ-1 from north")
    admin.expect("notice: new request REQ-2 from south")

    admin.pick("2")
    admin.expect("Approve which requests")
    admin.child.send("a")  # toggle all
    admin.child.send("\r")
    admin.answer("Rounds")
    admin.answer("Local epochs per round")
    admin.answer("proximal mu")
    admin.answer("Minimum clients")
    admin.answer("Seconds the sites have to join")
    admin.answer("Batch size", "8", replace=True)
    admin.answer("combine the sites' updates")  # the FedProx weighted mean
    admin.expect_re(r"approved into session 1 on port \d+ \(sites: north, south")

    _expect_all({client: ["approved: session 1", "round 1 epoch 1: loss", "session 1 finished"]
                 for client in clients.values()}, timeout=TRAINING_S)

    _await_notice(admin, "notice: session 1 completed: v1")
    admin.pick("6")
    admin.expect_re(r"v1\s+. session")
    admin.pick("4")
    admin.expect("no active session")
    admin.child.send("q")
    admin.pick("7")
    admin.answer("Details of which version")  # newest first: v1
    admin.expect("lineage")
    admin.expect("Privacy (server ledger")

    for client in clients.values():  # both accept at once: each rebuilds ResNet50 to save the .h5
        client.pick("5")
        client.expect_re(r"v1\s+. session")
        client.pick("6")
        client.answer("Accept which version")
    _expect_all({client: ["saved", f"{site}_FinalGlobal_v1.h5 (sha256 verified)"]
                 for site, client in clients.items()}, timeout=180)
    north = clients["north"]
    north.pick("7")
    north.answer("Evaluate which version")
    north.answer("Folder of scans")  # the site's own images by default
    north.expect_re(r"v1 on \d+ images in \S+sites/north: accuracy", timeout=120)
    north.expect("Confusion matrix")
    north.pick("8")
    north.expect("Accepted versions")
    north.expect("Privacy budget (delta")

    _request(north, "second try")
    admin.pick("3")
    admin.expect("Reject which request")
    admin.child.send("\r")
    admin.answer("Reason", "too many rounds for now")
    admin.expect("REQ-3 rejected: too many rounds for now")
    north.pick("2")
    north.expect("REJECTED")
    north.expect("notice: REQ-3 was rejected: too many rounds for now")

    intruder = spawn("client.menu.cli", ["--site", "north"], "intruder", "intruder")
    _set_up(intruder, "not-the-token", root / "sites" / "north")
    intruder.expect("unknown site or wrong token")
    intruder.expect("hint:")
    intruder.pick("9")
    assert intruder.finish() == 0

    for client in clients.values():
        client.pick("9")
        assert client.finish() == 0
    admin.pick("x")
    admin.expect("bye")
    assert admin.finish() == 0

    offline = spawn("client.menu.cli", ["--site", "north"], "clients", "offline")
    offline.expect(f"server not reachable at 127.0.0.1:{world['env']['FL_REQUEST_PORT']}")
    offline.expect("Check that the server is running")
    offline.pick("9")
    assert offline.finish() == 0


def _approve_one(admin: Term) -> int:
    """Approve the (only) pending request with the defaults; returns the session id."""
    admin.pick("2")
    admin.expect("Approve which requests")
    admin.child.send("a")
    admin.child.send("\r")
    for prompt in ("Rounds", "Local epochs per round", "proximal mu", "Minimum clients",
                   "Seconds the sites have to join", "Batch size", "combine the sites' updates"):
        admin.answer(prompt)
    return int(admin.expect_re(r"approved into session (\d+) on port").group(1))


def test_exit_while_a_session_runs_waits_or_stops_it_cleanly(world: dict) -> None:
    """The exit question: back to the menu; wait (the session ends meanwhile); stop it now."""
    home = world["root"] / "exit-server"
    settings = load_settings(home=home)
    store = Store.open(settings)
    store.ensure_initial_version(make_weights(0), metadata={"model": {"image_size": 32}})  # no TensorFlow
    store.enrol_site("north")
    env = {**world["env"], "FL_HOME": str(home), "FL_REQUEST_PORT": str(free_port()),
           "FL_SESSION_PORT_START": str(free_port())}
    try:
        store.submit_request("north", rounds=1, local_epochs=1, dp={"noise_multiplier": 1.0, "delta": 1e-5, "l2_norm_clip": 1.0}, declaration=declaration(100))
        admin = Term("server.console.cli", [], env, world["root"] / "exit-wait.log")
        try:
            admin.expect("request socket on", timeout=120)
            waited = _approve_one(admin)
            admin.pick("x")
            admin.answer("1 session(s) still running", DOWN + DOWN)  # back to the menu
            admin.pick("x")
            admin.answer("Before exiting:")  # wait for them to finish
            admin.expect("waiting for the sessions to end")
            time.sleep(1)
            assert admin.child.isalive(), "the console waits while the session runs"
            SessionManager(store, settings).stop(waited, reason="ended by its sites")  # from elsewhere
            admin.expect(f"session {waited} cancelled: ended by its sites")
            admin.expect("bye")
            assert admin.finish() == 0
        finally:
            admin.stop()

        store.submit_request("north", rounds=1, local_epochs=1, dp={"noise_multiplier": 1.0, "delta": 1e-5, "l2_norm_clip": 1.0}, declaration=declaration(100))
        admin = Term("server.console.cli", [], env, world["root"] / "exit-stop.log")
        try:
            admin.expect("request socket on", timeout=120)
            stopped = _approve_one(admin)
            pid = store.get_session(stopped).pid
            assert session_process_alive(pid)
            admin.pick("x")
            admin.answer("1 session(s) still running", DOWN)  # stop them cleanly now
            admin.expect("bye")
            assert admin.finish() == 0
        finally:
            admin.stop()
        session = store.get_session(stopped)
        assert session.state == SessionState.CANCELLED and session.reason == "server shut down by the admin"
        assert not session_process_alive(pid)
        assert store.get_session(waited).state == SessionState.CANCELLED
    finally:
        store.close()
