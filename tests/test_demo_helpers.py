"""The demo's plumbing: commands map to the real programs, outputs parse, children always stop."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from scripts.demo_processes import Children, CommandFailed, command_line, find
from server.console.commands import print_token


def test_commands_run_the_real_programs_with_this_interpreter() -> None:
    assert command_line("fl-history", "versions") == [sys.executable, "-m", "server.history.cli", "versions"]
    assert command_line("python -m scripts.pretrain_backbone", "--size", "32")[2] == "scripts.pretrain_backbone"


def test_the_token_is_found_in_what_fl_server_enrol_prints() -> None:
    out = io.StringIO()
    print_token(Console(file=out, width=40), "north", "abc_DEF-123" * 4)
    assert find(r"token: (\S+)", out.getvalue()) == "abc_DEF-123" * 4
    with pytest.raises(CommandFailed, match="expected"):
        find(r"sent (REQ-\d+)", "nothing here")


def test_run_returns_output_and_raises_on_failure(tmp_path: Path) -> None:
    children = Children({"FL_HOME": str(tmp_path / "home")}, tmp_path / "logs", columns=80)
    assert "fl-history" in children.run("fl-history", "--help")
    with pytest.raises(CommandFailed, match="no database"):
        children.run("fl-history", "versions")
    assert children.running == []


def test_run_all_runs_side_by_side_and_names_the_one_that_failed(tmp_path: Path) -> None:
    """The demo's per-site requests (seconds of privacy planning each) run at once, shown in order."""
    children = Children({}, tmp_path / "logs", columns=80)
    nap = ("python -m timeit", "-n", "1", "-r", "1", "__import__('time').sleep(1)")
    started = time.monotonic()
    outputs = children.run_all([nap, nap, ("python -m platform",)])
    assert time.monotonic() - started < 1.9  # two 1 s naps one after the other take 2 s
    assert ["loop" in outputs[0], "loop" in outputs[1], "Linux" in outputs[2]] == [True, True, True]
    with pytest.raises(CommandFailed, match="python -m json.tool /nonexistent"):
        children.run_all([nap, ("python -m json.tool", "/nonexistent")])
    assert children.running == []


def test_stop_all_ends_every_background_child(tmp_path: Path) -> None:
    children = Children({}, tmp_path / "logs", columns=80)
    servers = [children.start("python -m http.server", "0", "--bind", "127.0.0.1", log_name=f"http{i}.log")
               for i in range(2)]
    children.stop_all()
    assert all(process.poll() is not None for process in servers) and children.running == []
    assert oct((tmp_path / "logs" / "http0.log").stat().st_mode & 0o777) == "0o600"  # logs name sites


@pytest.mark.slow
def test_what_the_demo_shows_of_a_tensorflow_command_is_only_its_own_lines(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``fl-server init`` builds ResNet50 (TensorFlow starts); the demo echoes the child's output."""
    from scripts.demo import Demo
    from tests.output_checks import NOISE, library_lines

    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)  # the children must quiet themselves
    home = tmp_path / "home"
    children = Children({"FL_HOME": str(home), "FL_LOG_LEVEL": "INFO"}, tmp_path / "logs", columns=100)
    screen = io.StringIO()
    demo = Demo(Console(file=screen, width=100), home, children, request_port=0)
    demo.show("fl-server", "init", "--image-size", "32")
    shown = screen.getvalue()
    assert "$ fl-server init --image-size 32" in shown and "initial model v0 (32 px" in shown
    assert not library_lines(shown), shown
    assert NOISE.search((home / "logs" / "fl-server.log").read_text()), "TensorFlow's lines are in the log"
