"""What reaches a person's screen: pipe width, unbroken paths, progress lines, library noise.

The noise tests run small real programs in subprocesses (the C++ libraries write to file
descriptor 2 directly, so only a separate process shows what a terminal would get); the
TensorFlow-backed commands are covered end to end in ``test_quiet_commands.py``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from client.menu import views
from shared.dataset_layout import scan_dataset
from shared.errors import ConfigError
from shared.logging_setup import stderr_into
from shared.program import Program
from shared.progress import ProgressDisplay, report
from shared.terminal import PIPE_COLUMNS, make_console

REPO = Path(__file__).resolve().parent.parent


def captured(monkeypatch: pytest.MonkeyPatch) -> tuple[Console, io.StringIO]:
    """``make_console`` writing to a pipe-like buffer (what a script capturing us would get)."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    return make_console(), out


def test_a_pipe_is_100_columns_wide_or_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    console, _ = captured(monkeypatch)
    assert not console.is_terminal and console.width == PIPE_COLUMNS
    monkeypatch.setenv("COLUMNS", "132")
    assert console.width == 132


def test_a_long_data_path_is_never_broken(monkeypatch: pytest.MonkeyPatch, tiny_dataset: Path, tmp_path: Path) -> None:
    """The dataset summary used to put the folder in a ~20-column table's title, which folded it."""
    monkeypatch.setenv("COLUMNS", "60")
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "site-images"
    deep.parent.mkdir(parents=True)
    tiny_dataset.rename(deep)
    (deep / "glioma" / "scan notes with a long name.txt").write_text("not an image")
    console, out = captured(monkeypatch)
    views.print_dataset(console, scan_dataset(deep))
    text = out.getvalue()
    assert f"data folder: {deep}\n" in text
    assert "  glioma/scan notes with a long name.txt: not an image file (.txt)\n" in text
    table = [line for line in text.splitlines() if line.startswith(("┏", "┃", "│", "└"))]
    assert table and max(len(line) for line in table) <= 60


def test_progress_in_a_pipe_is_a_few_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    console, out = captured(monkeypatch)
    report("not shown", 1, 2)  # nobody listens: nothing happens
    with ProgressDisplay(console):
        for done in range(1, 11):
            report("backbone features", done, 10, "batches")
        report("downloading v3", 2_500_000, 5_000_000, "bytes")
    report("after the display", 1, 1)
    assert out.getvalue().splitlines() == [
        "backbone features: 1/10 batches", "backbone features: 3/10 batches", "backbone features: 5/10 batches",
        "backbone features: 8/10 batches", "backbone features: 10/10 batches", "downloading v3: 2.5/5.0 MB"]


def test_progress_on_a_terminal_is_a_bar() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with ProgressDisplay(console):
        report("classifying", 2, 4, "batches")
    assert "classifying" in out.getvalue() and "2/4 batches" in out.getvalue() and "━" in out.getvalue()


def test_native_stderr_goes_to_the_log_and_comes_back(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "logs" / "x.log"
    with stderr_into(log):
        os.write(2, b"Unable to register cuDNN factory (as C++ writes it)\n")
    os.write(2, b"after the block\n")
    assert "cuDNN" in log.read_text() and "cuDNN" not in capfd.readouterr().err
    assert "after the block" not in log.read_text()
    assert oct(log.stat().st_mode & 0o777) == "0o600" and oct(log.parent.stat().st_mode & 0o777) == "0o700"


def test_program_turns_errors_into_words_and_exit_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    console, out = captured(monkeypatch)
    assert Program(console).run(lambda: 0) == 0

    def fails() -> int:
        raise ConfigError("the [bold]settings[/bold] are wrong", hint="Fix FL_HOME.")

    assert Program(console).run(fails) == 1
    assert "error: the [bold]settings[/bold] are wrong\nhint: Fix FL_HOME." in out.getvalue()  # no markup read

    def crashes() -> int:
        raise ZeroDivisionError("boom")

    assert Program(console).run(crashes) == 1
    assert "error: unexpected ZeroDivisionError: boom" in out.getvalue()


_NOISY_PROGRAM = textwrap.dedent("""
    import logging, os, sys, warnings
    from pathlib import Path
    from shared.program import Program
    from shared.terminal import make_console

    def body():
        program.log_to(Path(sys.argv[1]))
        os.write(2, b"E external/local_xla/xla/stream_executor/cuda/cuda_dnn.cc Unable to register cuDNN factory\\n")
        warnings.warn("a library's UserWarning")
        logging.getLogger("tensorflow").warning("`model.compile_metrics` will be empty")
        logging.getLogger("absl").warning("absl says hello")
        logging.getLogger("client.menu").warning("our own warning")
        print("our own output")
        return 0

    program = Program(make_console(), verbose="--verbose" in sys.argv)
    sys.exit(program.run(body))
""")
_NOISE = ("cuDNN", "UserWarning", "compile_metrics", "absl says hello")


@pytest.mark.parametrize("verbose", [False, True])
def test_library_noise_goes_to_the_log_unless_verbose(tmp_path: Path, verbose: bool) -> None:
    log = tmp_path / "program.log"
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", _NOISY_PROGRAM, str(log), *(["--verbose"] if verbose else [])],
                          capture_output=True, text=True, cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, timeout=120,
                          check=False)
    screen = done.stdout + done.stderr
    assert done.returncode == 0 and "our own output" in screen and "our own warning" in screen
    assert oct(log.stat().st_mode & 0o777) == "0o600"
    for noise in _NOISE:
        assert (noise in screen) is verbose, noise
        assert (noise in log.read_text()) is (not verbose or noise != "cuDNN"), noise  # records: always logged
