"""PNG, JPEG and TIFF through OpenCV; 16-bit stays 16-bit, colour is returned as RGB(A)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from medimg_spark.errors import DecodeError
from medimg_spark.io.model import Frame, ParsedFile


def _to_rgb(img: np.ndarray) -> tuple[np.ndarray, str]:
    import cv2

    if img.ndim == 2:
        return img, "MONOCHROME2"
    if img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), "RGB"
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA), "RGBA"
    return img, "MONOCHROME2"


def decode_raster(data: bytes, fmt: str) -> list[np.ndarray]:
    """Decode every page of an image file with OpenCV (``IMREAD_UNCHANGED``).

    Raises:
        DecodeError: when OpenCV cannot decode the content (corrupt chunk, truncated stream).
    """
    import cv2

    buf = np.frombuffer(data, dtype=np.uint8)
    pages: list[np.ndarray]
    if fmt == "tiff":
        ok, decoded = cv2.imdecodemulti(buf, cv2.IMREAD_UNCHANGED)
        pages = list(decoded) if ok else []
    else:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        pages = [] if img is None else [img]
    if not pages:
        raise DecodeError(f"OpenCV could not decode this {fmt.upper()} stream (corrupt or truncated data)")
    return pages


def parse_raster(data: bytes, fmt: str, modality: str) -> ParsedFile:
    """Parse a PNG/JPEG/TIFF file; pixels decode lazily (a corrupt stream fails at ``decode``)."""
    n_frames = 1
    if fmt == "tiff":
        import io

        import tifffile

        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                n_frames = max(1, len(tif.pages))
        except Exception as exc:
            raise DecodeError(f"TIFF structure is unreadable: {exc}") from exc

    def decode() -> Iterator[Frame]:
        for i, page in enumerate(decode_raster(data, fmt)):
            arr, photometric = _to_rgb(page)
            yield Frame(i, arr, {"photometric": photometric, "bits_stored": int(arr.dtype.itemsize * 8)})

    return ParsedFile(
        source_format=fmt,
        modality=modality,
        has_pixels=True,
        n_frames=n_frames,
        instance_meta={"header_json": None},
        decode=decode,
    )
