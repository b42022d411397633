"""One logging configuration for every entry point: Rich on the console, plain text in a file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from rich.logging import RichHandler

_NOISY_LIBRARIES = ("tensorflow", "absl", "flwr", "grpc", "matplotlib", "PIL", "h5py")


def configure_logging(level: str | int = "INFO", log_file: Path | None = None, *, console: bool = True) -> None:
    """Route log records to a Rich console handler and, optionally, a file.

    Third-party libraries are held at WARNING so that a person reading the console sees the
    project's own messages; ``FL_LOG_LEVEL`` overrides ``level``. The interactive menus pass
    ``console=False`` and a file: a log line printed under an open prompt would garble it.
    """
    level = os.environ.get("FL_LOG_LEVEL", level)
    handlers: list[logging.Handler] = (
        [RichHandler(rich_tracebacks=False, show_path=False, markup=False)] if console else []
    )
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        handlers.append(file_handler)
    logging.basicConfig(level=level, handlers=handlers, format="%(message)s", force=True)
    for name in _NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    # Flower logs through its own console handler too; one copy of each line is enough.
    logging.getLogger("flwr").propagate = False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
