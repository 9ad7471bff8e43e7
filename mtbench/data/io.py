"""File helpers shared by readers and writers: checked loads and atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mtbench.errors import DataFormatError


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataFormatError(
            path,
            f"missing {what}",
            expected=f"a file holding the {what}",
            found="nothing at this path",
            fix="restore the file, or re-create the data set",
        )
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataFormatError(
            path,
            f"missing folder for the {what}",
            expected="a folder",
            found="nothing at this path" if not path.exists() else "not a folder",
            fix="check --root points at the data set's top folder",
        )
    return path


def load_npy(path: Path, what: str) -> np.ndarray:
    """``np.load`` that turns any failure into a `DataFormatError` naming the file."""
    require_file(path, what)
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:  # truncated, corrupt, pickled, not an .npy at all
        raise DataFormatError(
            path,
            f"cannot read the {what}: {exc}",
            expected="a readable .npy array",
            found="a truncated or corrupt file",
            fix="re-extract or re-generate this file",
        ) from None
    if not isinstance(array, np.ndarray):
        raise DataFormatError(path, f"the {what} is not a single array", found=type(array).__name__)
    return array


def _decode_image(path: Path, what: str, mode: str | None) -> tuple[np.ndarray, str]:
    """Fully decode an image, converted to ``mode`` when given; returns ``(array, mode stored in the file)``."""
    from PIL import Image

    require_file(path, what)
    try:
        with Image.open(path) as image:
            image.load()
            converted = image.convert(mode) if mode is not None and image.mode != mode else image
            return np.asarray(converted), image.mode
    except Exception as exc:
        raise DataFormatError(
            path,
            f"cannot decode the {what}: {exc}",
            expected="a readable image",
            found="a truncated or corrupt file",
            fix="re-extract or re-generate this file",
        ) from None


def load_image(path: Path, what: str, mode: str | None = None) -> np.ndarray:
    """Read a PNG/JPEG with Pillow, fully decoded, as a uint8 array (converted to ``mode`` when given)."""
    return _decode_image(path, what, mode)[0]


def load_image_as_stored(path: Path, what: str) -> tuple[np.ndarray, str]:
    """Read a PNG/JPEG with Pillow without converting it: ``(array, Pillow mode)``."""
    return _decode_image(path, what, None)


def stored_size(path: Path) -> tuple[int, int] | None:
    """``(H, W)`` of an image (from its header) or of an ``.npy`` array of rank >= 2; None if unreadable.

    Cheap: no pixel data is decoded. Used to decide which file of a sample has the wrong size.
    """
    try:
        if path.suffix == ".npy":
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape  # header only; no data read
            return (int(shape[0]), int(shape[1])) if len(shape) >= 2 else None
        from PIL import Image

        with Image.open(path) as image:
            width, height = image.size
        return height, width
    except Exception:  # missing, truncated or not an image: another check names it
        return None


def check_array(
    array: np.ndarray, path: Path | str, what: str, *, shape: tuple[int | None, ...], kinds: str
) -> np.ndarray:
    """Check ``array`` has ``shape`` (None = any) and a dtype kind in ``kinds`` (numpy kind codes)."""
    ok_shape = array.ndim == len(shape) and all(s is None or s == a for s, a in zip(shape, array.shape))
    if not ok_shape:
        want = "×".join("?" if s is None else str(s) for s in shape)
        raise DataFormatError(
            path,
            f"the {what} has the wrong shape",
            expected=want,
            found="×".join(map(str, array.shape)) or "a scalar",
            fix="the file does not match this layout; re-create it",
        )
    if array.dtype.kind not in kinds:
        names = {"f": "float", "i": "signed int", "u": "unsigned int", "b": "bool"}
        raise DataFormatError(
            path,
            f"the {what} has the wrong dtype",
            expected=" or ".join(names[k] for k in kinds),
            found=str(array.dtype),
            fix="the file does not match this layout; re-create it",
        )
    return array


def check_labels(
    labels: np.ndarray, path: Path | str, what: str, num_classes: int, ignore: tuple[int, ...] = ()
) -> None:
    """Every label is in [0, num_classes) or one of ``ignore``."""
    valid = (labels >= 0) & (labels < num_classes)
    for value in ignore:
        valid |= labels == value
    if not valid.all():
        bad = np.unique(labels[~valid])[:5].tolist()
        allowed = f"0..{num_classes - 1}" + (f" or {', '.join(map(str, ignore))}" if ignore else "")
        raise DataFormatError(
            path,
            f"the {what} has labels out of range",
            expected=allowed,
            found=f"{int((~valid).sum())} pixels with values such as {bad}",
            fix="check the class mapping of this file or re-create it",
        )


def check_finite(
    array: np.ndarray, path: Path | str, what: str, low: float | None = None, high: float | None = None
) -> None:
    if not np.isfinite(array).all():
        raise DataFormatError(
            path,
            f"the {what} has NaN or infinite values",
            expected="finite numbers",
            found=f"{int((~np.isfinite(array)).sum())} bad values",
        )
    if (low is not None and array.min() < low) or (high is not None and array.max() > high):
        raise DataFormatError(
            path,
            f"the {what} is out of range",
            expected=f"values in [{low}, {high}]",
            found=f"values in [{array.min():.4g}, {array.max():.4g}]",
        )


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def fingerprint_files(root: Path, files: Iterable[Path], *, content: bool = True) -> str:
    """SHA-256 over relative paths, sizes and (by default) contents of ``files``, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(Path(f) for f in files):
        rel = path.relative_to(root).as_posix()
        digest.update(rel.encode() + b"\0" + str(path.stat().st_size).encode() + b"\0")
        if content:
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def quiet_datasets() -> None:
    """Silence Hugging Face ``datasets``' own progress bars and info logs (mtbench shows its own)."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
