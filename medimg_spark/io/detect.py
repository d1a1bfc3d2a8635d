"""Detect a file's format from its content (magic bytes), never from its name."""

from __future__ import annotations

import gzip
import io
import re
import struct
import zipfile

DICOM = "dicom"
PNG = "png"
JPEG = "jpeg"
TIFF = "tiff"
NIFTI1 = "nifti1"
NIFTI2 = "nifti2"
NPZ = "npz"
NRRD = "nrrd"
METAIMAGE = "metaimage"
GZIP = "gzip"
ZIP = "zip"

#: How many leading bytes may precede the first element of a DICOM file without preamble.
DICOM_RESYNC_WINDOW = 16

_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)


def looks_like_dicom_element(data: bytes, offset: int = 0) -> bool:
    """True when ``data[offset:]`` plausibly starts with a DICOM data element (any of the 3 encodings).

    Accepts groups 0x0002..0x0010 (file meta, identifying, patient), explicit VR with a known VR, or
    implicit VR with a length that fits in the file.
    """
    chunk = data[offset : offset + 8]
    if len(chunk) < 8:
        return False
    for endian in ("<", ">"):
        group, elem = struct.unpack(endian + "HH", chunk[:4])
        if group not in (0x0002, 0x0004, 0x0008, 0x0010) or elem > 0x1000:
            continue
        if chunk[4:6] in _VRS:
            return True
        if endian == "<":
            (length,) = struct.unpack("<I", chunk[4:8])
            if length == 0xFFFFFFFF or length <= len(data) - offset - 8:
                return True
    return False


def _nifti_kind(head: bytes) -> str | None:
    if len(head) >= 348:
        for endian in ("<", ">"):
            (size,) = struct.unpack(endian + "i", head[:4])
            if size == 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
                return NIFTI1
            if size == 540 and head[4:8] in (b"n+2\x00", b"ni2\x00"):
                return NIFTI2
    return None


#: A MetaImage header line (``Key = Value``); the header's first line must be one.
_META_LINE = re.compile(rb"[ \t]*([A-Za-z_][^=\r\n\x00]*?)[ \t]*=[^\n\r\x00]*(?:\r?\n|$)")
#: Bytes of a MetaImage header :func:`looks_like_metaimage` reads.
METAIMAGE_PROBE_BYTES = 4096


def looks_like_metaimage(data: bytes) -> bool:
    """True when ``data`` starts with a MetaImage text header (``.mha``/``.mhd``).

    Every line up to ``ElementDataFile`` (the last header field) must be a ``Key = Value`` line, one
    of them ``ObjectType = Image`` or ``NDims = N``, within :data:`METAIMAGE_PROBE_BYTES` bytes.
    """
    head = data[:METAIMAGE_PROBE_BYTES]
    pos = 0
    found = False
    while pos < len(head):
        m = _META_LINE.match(head, pos)
        if m is None or m.end() == pos:
            return False
        key = m.group(1)
        value = m.group(0).split(b"=", 1)[1].strip()
        if key == b"ObjectType":
            if value != b"Image":
                return False
            found = True
        elif key == b"NDims" and value.isdigit():
            found = True
        elif key == b"ElementDataFile":
            return found
        pos = m.end()
    return False


def detect_format(data: bytes) -> str | None:
    """Return the format of a file's bytes, or None when it matches no supported format.

    Formats: ``dicom`` (with or without the 128-byte preamble), ``png``, ``jpeg``, ``tiff``,
    ``nifti1``, ``nifti2``, ``nrrd`` (magic ``NRRD000``), ``metaimage`` (a ``Key = Value`` MetaImage
    header), ``npz`` (a zip of ``.npy`` members), ``gzip`` (caller decompresses and detects again),
    ``zip`` (any other zip archive, unsupported).
    """
    if len(data) >= 132 and data[128:132] == b"DICM":
        return DICOM
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if data.startswith(b"\xff\xd8\xff"):
        return JPEG
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return TIFF
    nifti = _nifti_kind(data[:540])
    if nifti:
        return nifti
    if data.startswith(b"NRRD000"):
        return NRRD
    if looks_like_metaimage(data):
        return METAIMAGE
    if data.startswith(b"\x1f\x8b"):
        return GZIP
    if data.startswith(b"PK\x03\x04") or data.startswith(b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile:
            return None
        if names and all(n.endswith(".npy") for n in names):
            return NPZ
        return ZIP
    if any(looks_like_dicom_element(data, off) for off in range(min(DICOM_RESYNC_WINDOW, len(data)))):
        return DICOM
    return None


#: Bytes inflated per step by :func:`gunzip`: memory grows with the output, never by the limit at once.
_GUNZIP_CHUNK = 8 << 20


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress gzip data, refusing output larger than ``limit`` bytes (zip-bomb guard).

    The output is inflated in chunks, so memory follows what the stream really holds (reading
    ``limit + 1`` bytes at once would reserve the whole limit up front).

    Raises:
        ImageTooLargeError: the content inflates past ``limit``.
    """
    from medimg_spark.errors import ImageTooLargeError

    out = io.BytesIO()  # grows in place; getvalue() hands over its buffer without a copy
    size = 0
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
        while True:
            chunk = gz.read(min(_GUNZIP_CHUNK, limit + 1 - size))
            if not chunk:
                break
            out.write(chunk)
            size += len(chunk)
            if size > limit:
                raise ImageTooLargeError(
                    f"gzip content inflates past ingest.max_decompressed_bytes = {limit}; raise the limit "
                    "or decompress the file before ingest"
                )
    return out.getvalue()
