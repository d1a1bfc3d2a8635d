"""PNG, JPEG and TIFF through OpenCV; 16-bit stays 16-bit, colour is returned as RGB(A)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np

from medimg_spark.errors import DecodeError, ImageTooLargeError
from medimg_spark.io import codestream
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


#: Channels OpenCV returns for each PNG colour type (IMREAD_UNCHANGED; palette becomes BGR).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 4, 6: 4}


#: JPEG start-of-frame markers (SOF0..SOF15 without DHT, JPG and DAC).
def png_size(data: bytes) -> int | None:
    """Bytes of the decoded image, from the PNG's IHDR chunk (None when there is no IHDR)."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    return width * height * _PNG_CHANNELS.get(colour, 4) * (2 if depth == 16 else 1)


def jpeg_size(data: bytes) -> int | None:
    """Bytes of the decoded image, from the JPEG's start-of-frame header (None when none is found)."""
    frame = codestream.jpeg_geometry(data)
    return None if frame is None else frame.decoded_bytes


def parse_raster(data: bytes, fmt: str, modality: str, max_decoded_bytes: int | None = None) -> ParsedFile:
    """Parse a PNG/JPEG/TIFF file; pixels decode lazily (a corrupt stream fails at ``decode``).

    The decoded size is read from the header (PNG IHDR, JPEG SOF, every TIFF page) and checked
    against ``max_decoded_bytes`` before any pixel is decoded.

    Raises:
        ImageTooLargeError: decoding would take more than ``max_decoded_bytes``.
    """
    n_frames = 1
    size: int | None
    if fmt == "tiff":
        import io

        import numpy as np
        import tifffile

        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                n_frames = max(1, len(tif.pages))
                size = 0
                for page in tif.pages:
                    size += int(np.prod(page.shape, dtype=object)) * np.dtype(page.dtype).itemsize
        except Exception as exc:
            raise DecodeError(f"TIFF structure is unreadable ({type(exc).__name__})") from None
    else:
        size = png_size(data) if fmt == "png" else jpeg_size(data)
    if max_decoded_bytes is not None and size is not None and size > max_decoded_bytes:
        raise ImageTooLargeError(
            f"decoding this {fmt.upper()} needs {size} bytes, over ingest.max_decoded_bytes = "
            f"{max_decoded_bytes}; raise the limit (and the worker memory) or split the image"
        )

    def decode() -> Iterator[Frame]:
        pages = decode_raster(data, fmt)
        for i, page in enumerate(pages):
            arr, photometric = _to_rgb(page)
            yield Frame(i, arr, {"photometric": photometric, "bits_stored": int(arr.dtype.itemsize * 8)})
        if len(pages) < n_frames:  # OpenCV skips the pages it cannot decode without saying so
            raise DecodeError(
                f"OpenCV decoded {len(pages)} of the {n_frames} TIFF pages (the others are corrupt or in a "
                "format it does not read)"
            )

    return ParsedFile(
        source_format=fmt,
        modality=modality,
        has_pixels=True,
        n_frames=n_frames,
        instance_meta={"header_json": None},
        decode=decode,
    )
