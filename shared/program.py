"""How every command-line program runs: quiet libraries, one log file, errors in words, exit codes.

``fl-server``, ``fl-client``, ``fl-history`` and the demo start through ``Program.run``, so these
rules live once:

- before the body runs (and so before anything imports TensorFlow), library noise is routed
  away from the screen (``logging_setup.quiet_libraries``);
- once the body knows its log file (``log_to``, after the settings are read), file descriptor 2
  points there until the program ends: TensorFlow's and gRPC's C++ lines land in the file;
- an ``FLError`` prints ``error:`` and ``hint:`` and exits 1; Ctrl-C exits 130; anything else
  prints one line naming the log file, where the traceback went, and exits 1.

``--verbose`` (``verbose=True``) leaves descriptor 2 and the console's log records alone.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console

from shared.errors import FLError
from shared.logging_setup import configure_logging, quiet_libraries, stderr_into
from shared.terminal import print_error, print_unwrapped


class Program:
    """One run of a command-line program; ``run(body)`` returns its exit status."""

    def __init__(self, console: Console, *, verbose: bool = False) -> None:
        self.console = console
        self.verbose = verbose
        self.log_file: Path | None = None
        self._exits = ExitStack()

    def log_to(self, log_file: Path | None, *, level: str = "INFO", console_logs: bool = True) -> None:
        """Log records to ``log_file`` (and, with ``console_logs``, ours to the screen); unless
        verbose, the C++ libraries' stderr goes there too. Call once, before heavy imports."""
        self.log_file = log_file
        configure_logging(level, log_file, console=console_logs, quiet=not self.verbose)
        if not self.verbose:
            self._exits.enter_context(stderr_into(log_file))

    def run(self, body: Callable[[], int]) -> int:
        quiet_libraries(verbose=self.verbose)
        with self._exits:
            try:
                return body()
            except FLError as error:
                print_error(self.console, error)
                return 1
            except KeyboardInterrupt:
                self.console.print("interrupted")
                return 130
            except Exception as exc:  # noqa: BLE001 (a bug: one line here, the traceback in the log)
                traceback.print_exc()  # to descriptor 2: the log file, or the screen when verbose
                self.console.print("[red]error:[/] ", end="", markup=True)
                print_unwrapped(self.console, f"unexpected {type(exc).__name__}: {exc}")
                if self.log_file is not None and not self.verbose:
                    print_unwrapped(self.console, f"hint: the details are in {self.log_file}")
                return 1
