"""The demo's child processes: the real ``fl-server``/``fl-client``/``fl-history`` commands, run
with the demo's ``FL_*`` environment, and all of them stopped on the way out, whatever happens.

Each child gets its own process group, so a Ctrl-C in the terminal reaches only the demo, which
then stops the children itself in order (trainers first, then the server, which stops its
session processes), and nothing is left running.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

PROGRAMS = {"fl-server": "server.console.cli", "fl-client": "client.menu.cli", "fl-history": "server.history.cli"}


class CommandFailed(RuntimeError):
    """A demo step's command exited non-zero; the message carries its output's tail."""


def command_line(program: str, *args: str) -> list[str]:
    """``fl-server enrol x`` as this interpreter runs it (works without the venv's bin on PATH);
    ``program`` may also be ``python -m MODULE``."""
    return [sys.executable, "-m", PROGRAMS.get(program, program.removeprefix("python -m ")), *args]


def find(pattern: str, text: str) -> str:
    """The first group of ``pattern`` in a command's output (a token, a request id)."""
    match = re.search(pattern, text)
    if match is None:
        raise CommandFailed(f"expected {pattern!r} in the output:\n{text[-2000:]}")
    return match.group(1)


class Children:
    """Starts commands and remembers every long-running one so that ``stop_all`` can end it."""

    def __init__(self, env: dict[str, str], log_dir: Path, *, columns: int) -> None:
        """``columns``: the width children render their tables to (the demo's own console's)."""
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1", "COLUMNS": str(columns)}
        self.log_dir = log_dir
        self.running: list[subprocess.Popen[bytes]] = []

    def run(self, program: str, *args: str, timeout: float = 600) -> str:
        """Run to completion and return its output; a non-zero exit raises ``CommandFailed``."""
        process = self.start(program, *args, log_name=None)
        try:
            out, _ = process.communicate(timeout=timeout)
        finally:
            self.running.remove(process)
        text = out.decode(errors="replace")
        if process.returncode != 0:
            raise CommandFailed(f"{program} {' '.join(args)} exited with {process.returncode}:\n{text[-3000:]}")
        return text

    def run_all(self, commands: list[tuple[str, ...]], timeout: float = 600) -> list[str]:
        """``run`` several commands side by side (each ``(program, *args)``); outputs in their order.

        Every command runs to its end; the first that failed (in order) raises ``CommandFailed``.
        """
        processes = [self.start(program, *args, log_name=None) for program, *args in commands]
        outputs: list[tuple[int, str]] = []
        try:
            for process in processes:
                out, _ = process.communicate(timeout=timeout)
                outputs.append((process.returncode, out.decode(errors="replace")))
        finally:
            for process in processes:
                self.stop(process)
        for (program, *args), (code, text) in zip(commands, outputs):
            if code != 0:
                raise CommandFailed(f"{program} {' '.join(args)} exited with {code}:\n{text[-3000:]}")
        return [text for _, text in outputs]

    def start(self, program: str, *args: str, log_name: str | None) -> subprocess.Popen[bytes]:
        """Start in the background; output goes to ``log_dir/log_name`` (or a pipe when None)."""
        if log_name is None:
            out: int | object = subprocess.PIPE
        else:
            self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
            out = os.fdopen(os.open(self.log_dir / log_name, flags, 0o600), "wb")  # the child owns it
        try:
            process = subprocess.Popen(command_line(program, *args), env=self.env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if log_name is not None:
                out.close()  # type: ignore[union-attr]
        self.running.append(process)
        return process

    def wait(self, process: subprocess.Popen[bytes], what: str, timeout: float) -> None:
        """Wait for a background child; a failure names its log file."""
        code = process.wait(timeout=timeout)
        self.running.remove(process)
        if code != 0:
            raise CommandFailed(f"{what} exited with {code}; see the logs in {self.log_dir}")

    def stop(self, process: subprocess.Popen[bytes], grace_s: float = 60) -> None:
        """SIGTERM (a server stops its sessions on it), then SIGKILL after ``grace_s``."""
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process in self.running:
            self.running.remove(process)

    def stop_all(self) -> None:
        """Newest first: trainers before the server they talk to."""
        for process in reversed(list(self.running)):
            self.stop(process)
