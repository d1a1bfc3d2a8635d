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
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return data.tobytes(), int(rows), int(cols), int(channels), np.dtype(array.dtype.name).name


def decode(pixels: bytes, rows: int, cols: int, channels: int, dtype: str) -> np.ndarray:
    """Inverse of :func:`encode`: a (rows, cols) array when ``channels == 1``, else (rows, cols, channels)."""
    dt = np.dtype(dtype).newbyteorder("<")
    expected = rows * cols * channels
    if len(pixels) != expected * dt.itemsize:
        raise ValueError(
            f"pixel buffer holds {len(pixels)} bytes, expected rows*cols*channels*itemsize = "
            f"{expected * dt.itemsize} for {rows}x{cols}x{channels} {dtype}"
        )
    arr = np.frombuffer(pixels, dtype=dt)
    arr = arr.astype(np.dtype(dtype), copy=False)
    return arr.reshape((rows, cols) if channels == 1 else (rows, cols, channels))


def to_array(row: Any) -> np.ndarray:
    """Decode the pixels of an ``images`` / ``processed`` row (a Row, dict or pandas row)."""
    return decode(row["pixels"], int(row["rows"]), int(row["cols"]), int(row["channels"]), str(row["dtype"]))
