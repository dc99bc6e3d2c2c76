"""Weight arrays on disk: one ``.npz`` file per list of arrays, in order.

The coordinator's round checkpoints and the releases it signs store the global
bank-side model this way (arrays named ``arr_0``, ``arr_1``, ..., in the model's
``state_dict`` order), so both read and write through here.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedscore.errors import FedscoreError

__all__ = ["ArraysError", "NonFiniteError", "check_finite", "npz_bytes", "read_arrays"]


class ArraysError(FedscoreError, RuntimeError):
    """A weights file is unreadable; names the file."""

    code = grpc.StatusCode.DATA_LOSS


class NonFiniteError(FedscoreError, ValueError):
    """A model update or weights hold NaN or infinite values: never sent, aggregated or
    committed (one such update would spoil every party's model)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


def check_finite(arrays: Iterable[tuple[str, Any]], what: str) -> None:
    """Raise :class:`NonFiniteError` naming ``what`` and the first array (by its name)
    that holds a NaN or an infinity; integer arrays pass. ``arrays``: (name, array)
    pairs of numpy arrays or torch tensors."""
    for name, value in arrays:
        a = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            raise NonFiniteError(f"{what}: {name} has {bad} NaN or infinite values of "
                                 f"{a.size}; expected finite numbers")


def npz_bytes(arrays: list[np.ndarray]) -> bytes:
    """The ``.npz`` file's bytes for ``arrays`` (written atomically by the caller)."""
    buf = io.BytesIO()
    np.savez(buf, *arrays)
    return buf.getvalue()


def read_arrays(path: Path) -> list[np.ndarray]:
    """The arrays of a file :func:`npz_bytes` wrote, in order; ArraysError names the file
    for anything else (a truncated or spoilt zip, a plain ``.npy``, pickled objects,
    arrays that are not finite numbers)."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ArraysError(f"{path}: unreadable weights: not an .npz archive of arrays")
        with loaded as z:
            arrays = [z[f"arr_{i}"] for i in range(len(z.files))]
    except ArraysError:
        raise
    # zipfile.BadZipFile and zlib.error are not OSError/ValueError: a damaged archive
    # raises them from np.load or from reading a member (issue 15)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ArraysError(f"{path}: unreadable weights: {exc}") from None
    for i, a in enumerate(arrays):
        if a.dtype.kind not in "biuf":
            raise ArraysError(f"{path}: arr_{i} has dtype {a.dtype}; expected numbers")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ArraysError(f"{path}: arr_{i} holds NaN or infinite values; expected "
                              "finite weights")
    return arrays
