"""Weight arrays on disk: one ``.npz`` file per list of arrays, in order.

The coordinator's round checkpoints and the releases it signs store the global
bank-side model this way (arrays named ``arr_0``, ``arr_1``, ..., in the model's
``state_dict`` order), so both read and write through here.
"""

from __future__ import annotations

import io
from pathlib import Path

import grpc
import numpy as np

from fedscore.errors import FedscoreError

__all__ = ["ArraysError", "npz_bytes", "read_arrays"]


class ArraysError(FedscoreError, RuntimeError):
    """A weights file is unreadable; names the file."""

    code = grpc.StatusCode.DATA_LOSS


def npz_bytes(arrays: list[np.ndarray]) -> bytes:
    """The ``.npz`` file's bytes for ``arrays`` (written atomically by the caller)."""
    buf = io.BytesIO()
    np.savez(buf, *arrays)
    return buf.getvalue()


def read_arrays(path: Path) -> list[np.ndarray]:
    """The arrays of a file :func:`npz_bytes` wrote, in order."""
    try:
        with np.load(path) as z:
            return [z[f"arr_{i}"] for i in range(len(z.files))]
    except (OSError, ValueError, KeyError) as exc:
        raise ArraysError(f"{path}: unreadable weights: {exc}") from None
