"""Model weights (``list[np.ndarray]``) to and from ``.npz`` without pickle, written atomically.

Both the store and the wire use this one format, so a file's sha256 is also the sha256 of the
bytes a client downloads. Arrays are named ``arr_000``, ``arr_001``, ... in list order.

Atomic write: the bytes go to a temporary file in the target's folder, which is fsynced and
then ``os.replace``-d over the target, and the folder is fsynced so the rename itself survives a
power cut. A writer killed at any moment leaves either the old file or the new one under the
target name, never a half-written file (at worst a stray ``.tmp-*`` file that nothing loads).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.errors import IntegrityError, StorageWriteError

TEMP_PREFIX = ".tmp-"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    sha256: str
    size_bytes: int


def array_name(index: int) -> str:
    return f"arr_{index:03d}"


def weights_to_bytes(weights: list[np.ndarray]) -> bytes:
    """Serialise ``weights`` as ``.npz`` bytes; object arrays are refused (they would need pickle)."""
    arrays = {}
    for index, array in enumerate(weights):
        array = np.asarray(array)
        if array.dtype.hasobject:
            raise ValueError(f"weight {index} has dtype {array.dtype}; object arrays need pickle")
        arrays[array_name(index)] = array
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def weights_from_bytes(data: bytes, *, source: str = "weights") -> list[np.ndarray]:
    """Parse ``.npz`` bytes into the weight list; anything malformed is an IntegrityError."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            names = list(npz.files)
            expected = [array_name(i) for i in range(len(names))]
            if sorted(names) != sorted(expected):
                raise IntegrityError(f"{source} holds unexpected arrays {sorted(names)[:5]}")
            return [npz[name] for name in expected]
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise IntegrityError(f"{source} is not a readable weights file: {exc}") from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str) -> str:
    """sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def save_weights(path: Path | str, weights: list[np.ndarray]) -> WrittenFile:
    """Write ``weights`` to ``path`` atomically and return its sha256 and size."""
    data = weights_to_bytes(weights)
    write_bytes_atomic(Path(path), data)
    return WrittenFile(Path(path), sha256_bytes(data), len(data))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, ``os.replace``, fsync the folder."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".part", dir=path.parent)
    except OSError as exc:
        raise StorageWriteError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except OSError as exc:  # ENOSPC, EDQUOT, EFBIG: nothing half-written stays behind
        Path(temp_name).unlink(missing_ok=True)
        raise StorageWriteError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load_weights(path: Path | str) -> list[np.ndarray]:
    """Load a weights file without checking it against a recorded hash (tests, tools)."""
    path = Path(path)
    return weights_from_bytes(_read(path), source=str(path))


def load_weights_verified(path: Path | str, sha256: str) -> list[np.ndarray]:
    """Load a weights file only if its bytes hash to ``sha256``; the error names the file."""
    path = Path(path)
    return weights_from_bytes(read_bytes_verified(path, sha256), source=str(path))


def read_bytes_verified(path: Path | str, sha256: str) -> bytes:
    """The file's bytes, read once, so what was hashed is exactly what the caller gets."""
    path = Path(path)
    data = _read(path)
    actual = sha256_bytes(data)
    if actual != sha256:
        raise IntegrityError(
            f"weights file {path} does not match its recorded sha256 "
            f"(expected {sha256[:16]}..., found {actual[:16]}...)"
        )
    return data


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise IntegrityError(f"weights file {path} is missing") from None


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable; folders cannot be opened for fsync on some platforms."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
