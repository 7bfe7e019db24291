"""Atomic, verified checkpoints and RNG capture (promises 1-4 of RELIABILITY.md).

File format: one header line ``DARTSNAS-CKPT <schema> <sha256-of-payload> <payload-length>\n`` followed by
a ``torch.save`` payload. Saving writes a temporary file, flushes and fsyncs it, renames it over the target
and fsyncs the folder, so a crash at any point leaves the previous file byte-identical. The previous
checkpoint is kept as ``<name>.prev``. Loading checks the header, the length and the checksum before
``torch.load(weights_only=True)``; anything wrong raises CheckpointError naming the file and the reason.

Tests inject faults through ``DARTSNAS_FAULT`` (``save:before_rename``, ``save:enospc``); nothing else
reads it.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError, RunDirError

MAGIC = b"DARTSNAS-CKPT"
SCHEMA_VERSION = 1
TMP_SUFFIX = ".tmp"


def _fault(point: str) -> bool:
    return os.environ.get("DARTSNAS_FAULT", "") == point


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably; the old file survives any failure."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            if _fault("save:enospc"):
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if _fault("save:before_rename"):
            raise OSError(errno.EIO, "I/O error before rename (injected)")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    try:
        atomic_write_bytes(path, text.encode("utf-8"))
    except OSError as e:
        raise RunDirError(f"cannot write ({e.strerror or e})", str(path)) from None


def make_folder(path: str | Path, what: str = "folder") -> Path:
    """Create the folder ``path`` (and its parents) that a command writes into, or raise RunDirError in one line
    naming ``what``: a file in the way, a parent that cannot hold folders (``/proc``), no permission."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{what}: exists and is not a folder", str(out))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"{what}: cannot create ({e.strerror or e})", str(out)) from None
    return out


def clean_leftovers(folder: Path, log=None) -> None:
    """Remove temporary files a crash left behind, saying so (through ``log``, else the ``dartsnas`` logger)."""
    log = log if log is not None else logging.getLogger("dartsnas").info
    for tmp in Path(folder).glob(f"*{TMP_SUFFIX}"):
        try:
            tmp.unlink()
            log(f"removed leftover {tmp} from an interrupted save")
        except OSError:
            pass


def save_checkpoint(path: Path, payload: dict[str, Any], keep_previous: bool = True) -> None:
    """Save ``payload`` (tensors, numbers, strings, lists, dicts) with a checksum; keep the old one as .prev."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save({"schema_version": SCHEMA_VERSION, **payload}, buf)
    body = buf.getvalue()
    header = b"%s %d %s %d\n" % (MAGIC, SCHEMA_VERSION, hashlib.sha256(body).hexdigest().encode(), len(body))
    prev = path.with_name(path.name + ".prev")
    try:
        if keep_previous and path.exists():
            # Copy (not rename) so that a good checkpoint exists under `path` until the new one replaces it.
            atomic_write_bytes(prev, path.read_bytes())
        atomic_write_bytes(path, header + body)
    except OSError as e:
        why = e.strerror or str(e)
        last = f"; the last good checkpoint is {path}" if path.exists() else ""
        raise CheckpointError(f"saving failed ({why}){last}", str(path)) from None


def load_checkpoint(path: Path, expect_kind: str | None = None, map_location: str | torch.device = "cpu") -> dict:
    """Load and verify a checkpoint; a bad file raises CheckpointError naming it, the reason, and the
    previous checkpoint (``.prev``) when one is there to fall back to by hand."""
    try:
        return _load_checkpoint(Path(path), expect_kind, map_location)
    except CheckpointError as e:
        prev = Path(path).with_name(Path(path).name + ".prev")
        if prev.exists() and "no such checkpoint" not in e.message:
            raise CheckpointError(
                f"{e.message}; the previous checkpoint is kept as {prev} "
                f"(copy it over {Path(path).name} to resume from it)",
                e.path,
            ) from None
        raise


def _load_checkpoint(path: Path, expect_kind: str | None, map_location: str | torch.device) -> dict:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError("no such checkpoint", str(path)) from None
    except OSError as e:
        raise CheckpointError(f"cannot read ({e.strerror})", str(path)) from None
    nl = raw.find(b"\n", 0, 256)
    if nl < 0 or not raw.startswith(MAGIC + b" "):
        raise CheckpointError("not a dartsnas checkpoint (bad header)", str(path))
    parts = raw[:nl].split(b" ")
    if len(parts) != 4:
        raise CheckpointError("not a dartsnas checkpoint (bad header)", str(path))
    try:
        version, digest, length = int(parts[1]), parts[2].decode(), int(parts[3])
    except ValueError:
        raise CheckpointError("not a dartsnas checkpoint (bad header)", str(path)) from None
    if version != SCHEMA_VERSION:
        raise CheckpointError(f"unknown schema version {version} (this dartsnas reads {SCHEMA_VERSION})", str(path))
    body = raw[nl + 1 :]
    if len(body) != length:
        raise CheckpointError(f"truncated ({len(body)} of {length} payload bytes)", str(path))
    if hashlib.sha256(body).hexdigest() != digest:
        raise CheckpointError("checksum mismatch (the file is corrupted)", str(path))
    try:
        payload = torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(f"cannot be loaded ({type(e).__name__})", str(path)) from None
    if not isinstance(payload, dict):
        raise CheckpointError("payload is not a dictionary", str(path))
    if expect_kind is not None and payload.get("kind") != expect_kind:
        raise CheckpointError(f"is a {payload.get('kind')!r} checkpoint, expected {expect_kind!r}", str(path))
    return payload


# ------------------------------------------------------------------------------------------------ RNG


def capture_rng(extra: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _py_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    for name, gen in (extra or {}).items():
        state[f"gen:{name}"] = gen.get_state()
    return state


def _py_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"version": version, "internal": list(internal), "gauss": gauss}


def restore_rng(state: dict[str, Any], extra: dict[str, torch.Generator] | None = None) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in (extra or {}).items():
        gen.set_state(state[f"gen:{name}"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
