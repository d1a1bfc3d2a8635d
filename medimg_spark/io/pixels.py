"""Encoding of pixel arrays in the ``pixels`` column: raw little-endian bytes plus shape and dtype."""

from __future__ import annotations

from typing import Any

import numpy as np


def encode(array: np.ndarray) -> tuple[bytes, int, int, int, str]:
    """Encode a 2-D (rows, cols) or 3-D (rows, cols, channels) array.

    Returns:
        ``(pixels, rows, cols, channels, dtype)`` where ``pixels`` is the C-order,
        little-endian byte string of the array and ``dtype`` the numpy dtype name.
    """
    if array.ndim == 2:
        rows, cols = array.shape
        channels = 1
    elif array.ndim == 3:
        rows, cols, channels = array.shape
    else:
        raise ValueError(f"expected a 2-D or 3-D frame, got shape {array.shape}")
    le = array.dtype.newbyteorder("<") if array.dtype.byteorder not in ("|", "=", "<") else array.dtype
    if le.byteorder == "=":
        le = le.newbyteorder("<")
    data = np.ascontiguousarray(array, dtype=le)
    return data.tobytes(), int(rows), int(cols), int(channels), np.dtype(array.dtype.name).name


def decode(pixels: bytes, rows: int, cols: int, channels: int, dtype: str) -> np.ndarray:
    """Inverse of :func:`encode`: a (rows, cols) array when ``channels == 1``, else (rows, cols, channels)."""
    dt = np.dtype(dtype).newbyteorder("<")
    arr = np.frombuffer(pixels, dtype=dt)
    expected = rows * cols * channels
    if arr.size != expected:
        raise ValueError(
            f"pixel buffer holds {arr.size} values of {dtype}, expected rows*cols*channels = {expected}"
        )
    arr = arr.astype(np.dtype(dtype), copy=False)
    return arr.reshape((rows, cols) if channels == 1 else (rows, cols, channels))


def to_array(row: Any) -> np.ndarray:
    """Decode the pixels of an ``images`` / ``processed`` row (a Row, dict or pandas row)."""
    return decode(row["pixels"], int(row["rows"]), int(row["cols"]), int(row["channels"]), str(row["dtype"]))
