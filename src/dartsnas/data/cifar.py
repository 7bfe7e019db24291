"""CIFAR-10 in the standard python batch format (or a ``.npz`` subset), with a clear error per bad file.

``--download`` fetches the official archive and checks its md5 before unpacking (for users with internet).
"""

from __future__ import annotations

import hashlib
import pickle
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
BATCH_FOLDER = "cifar-10-batches-py"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"


class _NoCode(pickle.Unpickler):
    """Unpickle plain containers and numpy arrays only: a batch file must not run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        # Batches re-saved by Python 3: protocol 2 stores bytes via _codecs.encode, protocol 5
        # stores arrays via numeric._frombuffer. Both only build data.
        ("_codecs", "encode"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.numeric", "_frombuffer"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_batch(path: Path, expected: int | None = 10000) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError("missing CIFAR-10 batch file (expected data_batch_1..5 and test_batch)", str(path))
    try:
        with open(path, "rb") as f:
            d = _NoCode(f, encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any unpickling problem means a malformed file
        raise DataError(f"not a CIFAR-10 python batch ({type(e).__name__}: {e})", str(path)) from None
    if not isinstance(d, dict):
        raise DataError("not a CIFAR-10 python batch (not a dictionary)", str(path))
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise DataError("not a CIFAR-10 python batch (no 'data'/'labels')", str(path))
    data = np.asarray(d["data"])
    try:
        labels = np.asarray(d["labels"])
    except (ValueError, TypeError):  # ragged nesting
        labels = np.asarray([], dtype=object)
    if labels.size and labels.dtype.kind not in "iu":
        raise DataError(f"labels must be integers 0..9, got {labels.dtype} values", str(path))
    labels = labels.astype(np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"expected a uint8 array of N×3072, got {data.dtype} {tuple(data.shape)}", str(path))
    if expected is not None and data.shape[0] != expected:
        raise DataError(f"expected {expected} images, found {data.shape[0]}", str(path))
    if labels.shape != (data.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise DataError("labels missing, of the wrong length, or outside 0..9", str(path))
    return data, labels


def _download(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "cifar-10-python.tar.gz"
    try:
        urllib.request.urlretrieve(URL, archive)
    except OSError as e:
        raise DataError(f"download failed ({e}); put the python batches in the folder by hand", URL) from None
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    if md5 != ARCHIVE_MD5:
        raise DataError(f"md5 {md5} does not match the official {ARCHIVE_MD5}", str(archive))
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if member.isfile() and name in TRAIN_FILES + (TEST_FILE, "batches.meta"):
                with tar.extractfile(member) as src:
                    (folder / name).write_bytes(src.read())


def cifar_places(root: str | Path) -> list[Path]:
    """Where the CIFAR-10 python batches are looked for from ``root`` (``--data-dir`` or ``$DARTSNAS_DATA``):
    the folder itself, ``root/cifar-10-batches-py`` and ``root/cifar10/cifar-10-batches-py``, in that order."""
    root = Path(root).expanduser()
    return [root, root / BATCH_FOLDER, root / "cifar10" / BATCH_FOLDER]


def find_cifar_batches(root: str | Path) -> Path | None:
    """The first of ``cifar_places(root)`` holding any CIFAR-10 batch file, else None. A folder with only some
    of the files is still the one: reading it names each missing file."""
    for d in cifar_places(root):
        if d.is_dir() and any((d / f).is_file() for f in TRAIN_FILES + (TEST_FILE,)):
            return d
    return None


def _to_tensor(data: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, 32, 32)))


def load_cifar10(path: Path, download: bool = False):
    """Return (train_x, train_y, test_x, test_y) as CPU tensors, train in file order (spec §3.1).

    ``path``: a ``.npz`` subset, the folder of python batches, or a folder holding it (``cifar_places``).
    """
    path = Path(path)
    if path.suffix == ".npz":
        if not path.is_file():
            raise DataError("no such file (pass --data-dir to point at the CIFAR-10 data)", str(path))
        try:
            z = np.load(path)
            arrays = [z[k] for k in ("train_data", "train_labels", "test_data", "test_labels")]
        except Exception as e:  # noqa: BLE001
            raise DataError(f"not a CIFAR-10 subset archive ({type(e).__name__}: {e})", str(path)) from None
        tx, ty, vx, vy = arrays
        if tx.ndim != 2 or tx.shape[1] != 3072 or vx.ndim != 2 or vx.shape[1] != 3072:
            raise DataError("train_data/test_data must be N×3072 uint8", str(path))
        return (
            _to_tensor(tx.astype(np.uint8)),
            torch.from_numpy(ty.astype(np.int64)),
            _to_tensor(vx.astype(np.uint8)),
            torch.from_numpy(vy.astype(np.int64)),
        )
    root = path.expanduser()
    found = find_cifar_batches(root)
    if download and (found is None or not all((found / f).is_file() for f in TRAIN_FILES + (TEST_FILE,))):
        found = found or (root / BATCH_FOLDER if (root / BATCH_FOLDER).is_dir() else root)
        _download(found)
    if not root.is_dir():
        raise DataError(
            "no such folder (pass --data-dir to point at the CIFAR-10 python batches, or --download to fetch them)",
            str(root),
        )
    if found is None:
        raise DataError(
            "no CIFAR-10 python batches (data_batch_1..5, test_batch); looked in "
            + ", ".join(str(d) for d in cifar_places(root))
            + " (pass --data-dir to point at them, or --download to fetch them)",
            str(root),
        )
    path = found
    parts = [_read_batch(path / f) for f in TRAIN_FILES]
    test = _read_batch(path / TEST_FILE)
    tx = np.concatenate([p[0] for p in parts])
    ty = np.concatenate([p[1] for p in parts])
    return _to_tensor(tx), torch.from_numpy(ty), _to_tensor(test[0]), torch.from_numpy(test[1])
