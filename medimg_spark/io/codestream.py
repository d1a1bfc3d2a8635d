"""Image sizes from compressed codestream headers (JPEG, JPEG-LS, JPEG 2000), read before any decoding.

One marker walker serves every caller: the raster reader's decoded-size check, the DICOM reader's
check of encapsulated pixel data against its header, and its transfer-syntax inference for files
whose File Meta Information lost it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

#: Start-of-frame markers of every JPEG process (C4 DHT, C8 JPG, CC DAC are not frames) and SOF55 (JPEG-LS).
JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
#: JPEG 2000 codestream: SOC followed by SIZ.
J2K_SOC_SIZ = b"\xff\x4f\xff\x51"


@dataclass(frozen=True)
class Geometry:
    """What a codestream header says of the image it encodes.

    Attributes:
        rows: image height in pixels.
        cols: image width in pixels.
        components: samples per pixel.
        precision: bits per sample (JPEG / JPEG-LS; JPEG 2000's first component).
        marker: the JPEG start-of-frame marker code (``0xC0``..``0xCF``, ``0xF7``); None for JPEG 2000.
    """

    rows: int
    cols: int
    components: int
    precision: int
    marker: int | None = None

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the decoded image (one or two bytes per sample)."""
        return self.rows * self.cols * max(self.components, 1) * (2 if self.precision > 8 else 1)


def jpeg_geometry(data: bytes) -> Geometry | None:
    """The first start-of-frame header of a JPEG or JPEG-LS stream (None when there is none).

    Walks the marker segments from SOI: fill bytes and parameterless markers (TEM, RSTn, SOI) are
    skipped, every other segment by its length; anything else ends the walk.
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 10 <= len(data):
        if data[i] != 0xFF:
            return None
        code = data[i + 1]
        if code == 0xFF:  # fill byte
            i += 1
            continue
        if code in JPEG_SOF:
            precision = data[i + 4]
            rows, cols = struct.unpack(">HH", data[i + 5 : i + 9])
            return Geometry(rows, cols, data[i + 9], precision, code)
        if code == 0x01 or 0xD0 <= code <= 0xD9:
            i += 2
            continue
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return None


def jpeg_ls_near(data: bytes) -> int:
    """The NEAR parameter of a JPEG-LS stream's first scan (0: lossless; >0: near-lossless; 0 if not found)."""
    sos = data.find(b"\xff\xda")
    if sos < 0 or len(data) < sos + 5:
        return 0
    components = data[sos + 4]
    near = sos + 5 + 2 * components
    return data[near] if near < len(data) else 0


def j2k_geometry(data: bytes) -> Geometry | None:
    """The SIZ header of a JPEG 2000 codestream (raw or inside a JP2 box), None when absent."""
    siz = data.find(J2K_SOC_SIZ)
    if siz < 0 or len(data) < siz + 43:
        return None
    xsiz, ysiz, xo, yo = struct.unpack(">IIII", data[siz + 8 : siz + 24])
    (csiz,) = struct.unpack(">H", data[siz + 40 : siz + 42])
    precision = (data[siz + 42] & 0x7F) + 1
    return Geometry(max(ysiz - yo, 0), max(xsiz - xo, 0), csiz, precision)


def geometry(data: bytes) -> Geometry | None:
    """JPEG 2000's SIZ or a JPEG / JPEG-LS start of frame, whichever the stream holds."""
    return j2k_geometry(data) or jpeg_geometry(data)
