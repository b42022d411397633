"""One logging configuration for every entry point: our lines on the screen, library noise in a file.

People see the project's own output. What TensorFlow, absl, Keras, TF-Privacy, Flower and gRPC
say goes to the program's log file instead, and ``--verbose`` brings it back to the screen.
Two channels need two tools:

- Python-level records and warnings (absl, Keras, TF-Privacy, ``warnings.warn``) are log records:
  the console handler shows only the project's own loggers; the file handler takes everything.
- TensorFlow's C++ start-up lines ("Unable to register cuDNN factory", "Could not find cuda
  drivers") and gRPC's are written by C++ straight to file descriptor 2, past Python. While a
  program runs, ``stderr_into`` points descriptor 2 at the log file; stdout stays the person's.
  ``quiet_libraries`` sets ``TF_CPP_MIN_LOG_LEVEL`` first, so INFO chatter is not even written.

Both must happen before TensorFlow is imported: its C++ log level is read once, at import.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.logging import RichHandler

_NOISY_LIBRARIES = ("tensorflow", "absl", "flwr", "grpc", "matplotlib", "PIL", "h5py", "py.warnings")
#: Loggers whose records a person should see on the console (everything else: log file only).
OWN_LOGGERS = ("server", "client", "shared", "scripts", "bench", "__main__")
#: TensorFlow's C++ log level when quiet: warnings and errors reach the log file, INFO does not.
QUIET_TF_CPP_LEVEL = "1"


def quiet_libraries(*, verbose: bool = False) -> None:
    """Before TensorFlow is imported: its C++ log level, and Python warnings into logging.

    An explicit ``TF_CPP_MIN_LOG_LEVEL`` in the environment is kept (a person asked for it).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else QUIET_TF_CPP_LEVEL)
    logging.captureWarnings(True)


def configure_logging(
    level: str | int = "INFO", log_file: Path | None = None, *, console: bool = True, quiet: bool = False
) -> None:
    """Route log records to a Rich console handler and, optionally, a file.

    With ``quiet`` (a person reads the console) the console shows only the project's own records
    from WARNING up; otherwise (a session process, whose console is its log) every record from
    ``level``. The file gets every record from ``level`` (third-party ones from WARNING). ``FL_LOG_LEVEL`` overrides ``level``. The
    interactive menus pass ``console=False`` and a file: a log line under an open prompt would
    garble it.
    """
    level = os.environ.get("FL_LOG_LEVEL", level)
    handlers: list[logging.Handler] = []
    if console:
        screen = RichHandler(rich_tracebacks=False, show_path=False, markup=False)
        if quiet:  # people read our prints; of the records, our warnings and errors
            screen.addFilter(_own_records)
            screen.setLevel(logging.WARNING)
        handlers.append(screen)
    if log_file is not None:
        os.close(_open_private(log_file))  # 0600 before logging creates it with the umask's mode
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(file_handler)
    logging.basicConfig(level=level, handlers=handlers or [logging.NullHandler()], format="%(message)s",
                        force=True)
    for name in _NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    # Flower logs through its own handler on stderr too; one copy of each line is enough.
    logging.getLogger("flwr").propagate = False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_TF_CPP_LEVEL)


def _own_records(record: logging.LogRecord) -> bool:
    return record.name.split(".", 1)[0] in OWN_LOGGERS


@contextmanager
def stderr_into(log_file: Path | None) -> Iterator[None]:
    """Point file descriptor 2 at ``log_file`` for the block (``None``: leave it alone).

    C/C++ libraries write there directly, and so does ``sys.stderr`` when it is the real one;
    a test harness that replaced ``sys.stderr`` keeps its own stream. Restored on exit.
    """
    if log_file is None:
        yield
        return
    saved = _point_stderr_at(log_file)
    try:
        yield
    finally:
        _flush(sys.stderr)
        os.dup2(saved, 2)
        os.close(saved)


def quiet_process(log_file: Path, *, verbose: bool = False, level: str = "INFO") -> None:
    """For a script that runs start to end (a bench, a helper the demo runs): all of the above,
    for the rest of the process. Call it before importing TensorFlow."""
    quiet_libraries(verbose=verbose)
    configure_logging(level, log_file, quiet=not verbose)
    if not verbose:
        os.close(_point_stderr_at(log_file))  # for good: the process ends with it


def quiet_script(script_file: str) -> Path:
    """``quiet_process`` into ``<FL_HOME or ./var>/logs/<script>.log`` (benches, helper scripts);
    returns that path. Call it before importing TensorFlow; ``FL_LOG_LEVEL=DEBUG`` keeps more."""
    log_file = Path(os.environ.get("FL_HOME", "var")) / "logs" / f"{Path(script_file).stem}.log"
    quiet_process(log_file)
    return log_file


def _point_stderr_at(log_file: Path) -> int:
    """Make descriptor 2 append to ``log_file``; returns a duplicate of what it was."""
    target = _open_private(log_file)
    _flush(sys.stderr)
    saved = os.dup(2)
    os.dup2(target, 2)
    os.close(target)
    return saved


def _flush(stream: object) -> None:
    try:
        stream.flush()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        pass


def _open_private(log_file: Path) -> int:
    """``log_file`` opened for appending; created 0600 in a 0700 folder (logs may name sites)."""
    log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
