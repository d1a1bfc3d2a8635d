"""DICOM reader: pydicom with the pylibjpeg (libjpeg, openjpeg, rle) and gdcm plugins."""

from __future__ import annotations

import io
import itertools
import json
import math
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from medimg_spark.errors import (
    DecodeError,
    ImageTooLargeError,
    InvalidHeaderError,
    MedimgError,
    NoPixelDataError,
    TruncatedFileError,
)
from medimg_spark.io import codestream
from medimg_spark.io.detect import DICOM_RESYNC_WINDOW, looks_like_dicom_element
from medimg_spark.io.model import Frame, ParsedFile

#: Binary values longer than this are left out of ``header_json`` (bulk data).
BULK_DATA_THRESHOLD = 1024

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_ENCODINGS = ((True, True), (False, True), (False, False))  # (implicit VR, little endian)

#: Largest value of a 32-bit signed integer column (``n_frames``, ``instance_number``...).
INT32_MAX = 2**31 - 1
#: A DICOM UID: dot-separated decimal components, at most 64 characters (PS3.5 §9.1).
#: A DICOM UID's characters (PS3.5 9.1): digit groups separated by dots (at most 64 characters in all).
UID_SYNTAX = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: Value representation of each standard File Meta Information element (PS3.10 §7.1).
_FILE_META_VR = {
    0x0000: "UL",
    0x0001: "OB",
    0x0002: "UI",
    0x0003: "UI",
    0x0010: "UI",
    0x0012: "UI",
    0x0013: "SH",
    0x0016: "AE",
    0x0017: "AE",
    0x0018: "AE",
    0x0026: "UR",
    0x0027: "UR",
    0x0028: "UR",
    0x0100: "UI",
    0x0102: "OB",
}
_TEXT_MAX = {"UI": 64, "SH": 16, "AE": 16, "UR": 1024}
_BINARY_META_MAX = 1 << 16
#: pydicom's warning when a file ends inside an undefined-length item or sequence.
_EOF_WARNING = "End of file reached before delimiter"


def _read_raw(data: bytes, offset: int, implicit: bool, little: bool) -> Any:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.filereader import read_dataset

    ds = read_dataset(io.BytesIO(data[offset:]), is_implicit_VR=implicit, is_little_endian=little)
    fds = FileDataset(
        "", ds, preamble=None, file_meta=FileMetaDataset(), is_implicit_VR=implicit, is_little_endian=little
    )
    return fds


def _element_count(ds: Any) -> int:
    return sum(1 for _ in ds)


def _read_without_preamble(data: bytes, recovered: list[str], messages: list[str]) -> tuple[Any, int]:
    """Read a dataset without preamble/file meta: try each encoding at each plausible start offset.

    The warnings pydicom gave while reading the chosen candidate are appended to ``messages``.
    """
    best: tuple[int, Any, int, tuple[bool, bool], list[str]] | None = None
    for offset in range(min(DICOM_RESYNC_WINDOW, len(data))):
        if not looks_like_dicom_element(data, offset):
            continue
        for implicit, little in _ENCODINGS:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    ds = _read_raw(data, offset, implicit, little)
                    # Touch every value so a wrong encoding fails here rather than later.
                    for elem in ds.iterall():
                        _ = elem.value
                except Exception:
                    continue
            n = _element_count(ds)
            if best is None or n > best[0]:
                best = (n, ds, offset, (implicit, little), [str(w.message) for w in caught])
        if best is not None and best[0] > 1:
            break
    if best is None:
        from pydicom.errors import InvalidDicomError

        raise InvalidDicomError("no readable DICOM data elements found at the start of the file")
    _, ds, offset, (implicit, little), found = best
    messages.extend(found)
    recovered.append("no_preamble")
    if offset:
        recovered.append(f"skipped_{offset}_leading_bytes")
    # File meta elements (group 0002) read as part of the dataset belong in file_meta.
    for tag in [t for t in list(ds.keys()) if t.group == 0x0002]:
        ds.file_meta[tag] = ds[tag]
        del ds[tag]
    if not ds.file_meta.get("TransferSyntaxUID"):
        ds.file_meta.TransferSyntaxUID = _uncompressed_syntax(implicit, little)
        recovered.append("inferred_transfer_syntax")
    return ds, offset


def _uncompressed_syntax(implicit: bool, little: bool) -> Any:
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _infer_encapsulated_syntax(ds: Any) -> Any | None:
    """Guess the transfer syntax of encapsulated pixel data from the first fragment's codestream."""
    from pydicom import uid
    from pydicom.encaps import generate_fragments

    try:
        # the first item is the Basic Offset Table (often empty): the codestream starts in the second
        fragment = next(itertools.islice(generate_fragments(ds.PixelData), 1, None))
    except Exception:
        return None
    if fragment.startswith(codestream.J2K_SOC_SIZ) or fragment[4:8] == b"jP  ":
        return uid.JPEG2000
    if fragment.startswith(b"\xff\xd8"):
        # the start-of-frame marker tells the JPEG process apart
        process: dict[int, Any] = {
            0xC1: uid.JPEGExtended12Bit,
            0xC2: uid.JPEGExtended12Bit,
            0xC3: uid.JPEGLosslessSV1,
            0xF7: uid.JPEGLSLossless,
        }
        frame = codestream.jpeg_geometry(fragment)
        if frame is None:
            return uid.JPEGBaseline8Bit
        if frame.marker == 0xF7 and codestream.jpeg_ls_near(fragment):
            return uid.JPEGLSNearLossless
        return process.get(frame.marker or 0xC0, uid.JPEGBaseline8Bit)
    return uid.RLELossless if len(fragment) >= 64 and int.from_bytes(fragment[:4], "little") <= 15 else None


#: Trailing zero bytes beyond which :func:`read_dataset_bytes` first reads the file without them.
PADDING_SHORTCUT = 1 << 20


def read_dataset_bytes(data: bytes) -> tuple[Any, list[str]]:
    """Parse DICOM bytes into a pydicom dataset, repairing what can be repaired.

    A long run of trailing zero bytes (padding: pydicom would read every 8 of them as an element,
    0.65 s per MiB) is left out of a first read; when the zeros belong to a value after all (dark
    pixels at the end of the pixel data), that read finds the value cut short and the whole file is
    read instead.

    Returns:
        ``(dataset, recovered)`` where ``recovered`` lists the repairs applied.

    Raises:
        InvalidHeaderError: sequences nested deeper than pydicom's recursive parser can follow.
        pydicom.errors.InvalidDicomError: or another parse error when nothing readable remains.
    """
    try:
        padding = len(data) - len(data.rstrip(b"\x00"))
        if padding > PADDING_SHORTCUT:
            try:
                ds, recovered = _read_dataset_bytes(data[: len(data) - padding + 4096])
            except TruncatedFileError:
                pass
            else:
                recovered.append("trailing_zero_padding_ignored")
                return ds, recovered
        return _read_dataset_bytes(data)
    except RecursionError:
        raise InvalidHeaderError(
            "sequences are nested deeper than the parser can follow (Python's recursion limit); the header "
            "is damaged or hostile, re-export the file"
        ) from None


def _read_dataset_bytes(data: bytes) -> tuple[Any, list[str]]:
    import pydicom

    recovered: list[str] = []
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if len(data) >= 132 and data[128:132] == b"DICM":
            ds = pydicom.dcmread(io.BytesIO(data))
            start = 0
        else:
            ds, start = _read_without_preamble(data, recovered, messages)
            if not _describes_an_object(ds):
                from pydicom.errors import InvalidDicomError

                raise InvalidDicomError(
                    "no DICOM object found: the data elements at the start of the file identify no object "
                    "(no SOP class or instance, study, series, modality or pixel data)"
                )
    messages.extend(str(w.message) for w in caught)
    if any(_EOF_WARNING in m for m in messages):
        raise TruncatedFileError(
            "the file ends inside an item or sequence of undefined length (no delimiter before the end "
            "of the file); the file is truncated, re-export or re-transfer it"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        object.__setattr__(ds, "_medimg_source", data[start:])
        try:
            check_complete(ds, len(data), start)  # on the raw elements: before any value is converted
        finally:
            object.__delattr__(ds, "_medimg_source")
        if _drop_delimiters(ds):
            recovered.append("stray_delimiters_removed")
        validate_file_meta(ds)
    if not len(ds._dict):
        raise TruncatedFileError(
            "the file holds no data elements after its header; it is truncated, re-export or re-transfer it"
        )
    ts = ds.file_meta.get("TransferSyntaxUID")
    if ts is None or not str(ts):
        if any(k in ds for k in _PIXEL_KEYWORDS) and "PixelData" in ds and _is_encapsulated(ds):
            inferred = _infer_encapsulated_syntax(ds)
            if inferred is not None:
                ds.file_meta.TransferSyntaxUID = inferred
                recovered.append("inferred_transfer_syntax")
        else:
            implicit, little = getattr(ds, "original_encoding", (True, True))
            ds.file_meta.TransferSyntaxUID = _uncompressed_syntax(
                bool(implicit) if implicit is not None else True,
                bool(little) if little is not None else True,
            )
            recovered.append("inferred_transfer_syntax")
    return ds, recovered


#: Attributes of which a file without preamble must hold one to be taken for a DICOM object.
_OBJECT_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "Rows",
    "PixelData",
)


def _describes_an_object(ds: Any) -> bool:
    """Whether a dataset read without preamble names an object (random bytes can parse as elements)."""
    for keyword in _OBJECT_KEYWORDS:
        try:
            value = ds.get(keyword)
        except Exception:
            continue
        if value is not None and str(value).strip(" \x00"):
            return True
    return False


def _drop_delimiters(ds: Any, depth: int = 0) -> int:
    """Remove stray item/sequence delimiters ((FFFE,E000), (FFFE,E00D), (FFFE,E0DD)) from a dataset.

    Some writers leave delimiter items outside any sequence. pydicom reads them as elements of VR
    ``NONE`` that cannot be converted, and writes a dataset without them; they carry no value, so
    they are dropped here, in nested sequence items too.

    Returns:
        How many were removed.
    """
    removed = 0
    for tag in list(ds._dict):
        if tag >> 16 == 0xFFFE:
            del ds._dict[tag]
            removed += 1
            continue
        raw = ds._dict[tag]
        vr = getattr(raw, "VR", None)
        if vr not in ("SQ", None) or depth > 64:
            continue
        try:
            elem = ds[tag]
        except Exception:
            continue  # an unreadable value is reported where it is used
        if elem.VR == "SQ":
            for item in elem.value or []:
                removed += _drop_delimiters(item, depth + 1)
    return removed


def validate_file_meta(ds: Any) -> None:
    """Check every File Meta Information element before any of its values is used.

    A damaged file-meta length can make one element swallow the whole dataset (patient name,
    UIDs, dates...); such values must never be copied into a table. Checked: the group (0002),
    the value representation of standard elements, UID syntax and length, text lengths.

    Raises:
        InvalidHeaderError: naming the element (never its value).
    """
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return
    for tag in list(meta._dict):
        name = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        fix = "the file meta header is damaged; re-export the file"
        if tag >> 16 != 0x0002:
            raise InvalidHeaderError(f"file meta holds element {name} outside group 0002; {fix}")
        try:
            elem = meta[tag]
        except Exception as exc:
            raise InvalidHeaderError(
                f"file meta element {name} cannot be read ({type(exc).__name__}); {fix}"
            ) from None
        expected = _FILE_META_VR.get(tag & 0xFFFF)
        if expected is not None and str(elem.VR) != expected:
            raise InvalidHeaderError(f"file meta element {name} has VR {elem.VR}, expected {expected}; {fix}")
        value = elem.value
        if value is None:
            continue
        if isinstance(value, bytes | bytearray):
            if len(value) > _BINARY_META_MAX:
                raise InvalidHeaderError(f"file meta element {name} is {len(value)} bytes long; {fix}")
            continue
        if isinstance(value, int):
            continue
        text = str(value)
        limit = _TEXT_MAX.get(elem.VR, 1024)
        if len(text) > limit:
            raise InvalidHeaderError(
                f"file meta element {name} ({elem.VR}) holds {len(text)} characters, more than {limit}; {fix}"
            )
        if elem.VR == "UI":
            uid = text.rstrip("\x00 ")
            if uid and not UID_SYNTAX.match(uid):
                raise InvalidHeaderError(f"file meta element {name} is not a valid UID; {fix}")
        elif not text.isprintable() or not text.isascii():
            raise InvalidHeaderError(f"file meta element {name} holds non-printable characters; {fix}")


def number_of_frames(ds: Any) -> int:
    """NumberOfFrames as pydicom reads it (absent or 0 → 1), checked to be a sane positive integer.

    Raises:
        InvalidHeaderError: the value is not an integer, is negative, or does not fit 32 bits.
    """
    if "NumberOfFrames" not in ds:
        return 1
    try:
        value = ds.NumberOfFrames
        n = 0 if value is None or value == "" else int(value)
    except Exception:
        raise InvalidHeaderError(
            "NumberOfFrames (0028,0008) is not an integer; the header is damaged, re-export the file"
        ) from None
    if n < 0 or n > INT32_MAX:
        raise InvalidHeaderError(
            f"NumberOfFrames (0028,0008) = {n} is out of range (1..{INT32_MAX}); the header is damaged, "
            "re-export the file"
        )
    return n or 1


def decoded_size(ds: Any, n_frames: int) -> int | None:
    """Bytes ``pixel_array`` would allocate: rows × cols × samples × frames × bytes per sample.

    None when Rows/Columns are missing (pydicom then refuses to decode anyway).
    """
    rows, cols = _int(_get(ds, "Rows")), _int(_get(ds, "Columns"))
    if rows is None or cols is None:
        return None
    samples = max(1, _int(_get(ds, "SamplesPerPixel")) or 1)
    bits = _int(_get(ds, "BitsAllocated")) or 8
    if "FloatPixelData" in ds:
        bits = 32
    elif "DoubleFloatPixelData" in ds:
        bits = 64
    per_sample = max(1, math.ceil(bits / 8))
    return max(rows, 0) * max(cols, 0) * samples * n_frames * max(per_sample, 1)


#: Samples per pixel of each photometric interpretation.
_PI_SAMPLES = {
    "MONOCHROME1": 1,
    "MONOCHROME2": 1,
    "PALETTE COLOR": 1,
    "RGB": 3,
    "HSV": 3,
    "YBR_FULL": 3,
    "YBR_FULL_422": 3,
    "YBR_PARTIAL_420": 3,
    "YBR_PARTIAL_422": 3,
    "YBR_ICT": 3,
    "YBR_RCT": 3,
    "ARGB": 4,
    "CMYK": 4,
}


def codestream_geometry(fragment: bytes) -> tuple[int, int, int] | None:
    """``(rows, cols, components)`` from a JPEG / JPEG-LS SOF or a JPEG 2000 SIZ marker (None if absent)."""
    found = codestream.geometry(fragment)
    return None if found is None else (found.rows, found.cols, found.components)


#: Image Pixel module elements (PS3.3 C.7.6.3) a decoder cannot do without: keyword, tag, and the pixel
#: data elements that need it (Bits Stored and Pixel Representation do not apply to float pixel data).
_REQUIRED_PIXEL_ELEMENTS = (
    ("Rows", "(0028,0010)", _PIXEL_KEYWORDS),
    ("Columns", "(0028,0011)", _PIXEL_KEYWORDS),
    ("BitsAllocated", "(0028,0100)", _PIXEL_KEYWORDS),
    ("BitsStored", "(0028,0101)", ("PixelData",)),
    ("PixelRepresentation", "(0028,0103)", ("PixelData",)),
    ("PhotometricInterpretation", "(0028,0004)", _PIXEL_KEYWORDS),
)


def check_pixel_module(ds: Any) -> None:
    """Refuse pixel data whose Image Pixel module lacks an element every decoder needs.

    Raises:
        InvalidHeaderError: naming each missing or empty element.
    """
    pixel_keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
    if pixel_keyword is None:
        return
    missing = [
        f"{keyword} {tag}"
        for keyword, tag, applies in _REQUIRED_PIXEL_ELEMENTS
        if pixel_keyword in applies and _str(_get(ds, keyword)) is None
    ]
    if missing:
        raise InvalidHeaderError(
            f"the file holds {pixel_keyword} but its Image Pixel module lacks {', '.join(missing)}, which "
            "a decoder needs to read it; the header is incomplete, re-export the file"
        )


def check_pixel_header(ds: Any, n_frames: int) -> None:
    """Check the Image Pixel module against itself and the pixel data before a codec sees them.

    A codec given a header that contradicts its data may abort the whole process (gdcm asserts on
    JPEG-LS whose Rows exceed the codestream's, and on JPEG 2000 whose photometric interpretation
    implies a different component count), so these are refused first:

    * SamplesPerPixel that contradicts PhotometricInterpretation;
    * native pixel data longer than Rows × Columns × samples × frames by more than one frame;
    * encapsulated pixel data whose first codestream has other dimensions or components.

    Raises:
        DecodeError: naming the contradiction.
    """
    rows, cols = _int(_get(ds, "Rows")) or 0, _int(_get(ds, "Columns")) or 0
    samples = _int(_get(ds, "SamplesPerPixel")) or 1
    pi = (_str(_get(ds, "PhotometricInterpretation")) or "").strip().upper()
    want = _PI_SAMPLES.get(pi)
    if want is not None and want != samples:
        raise DecodeError(
            f"PhotometricInterpretation {pi} has {want} sample(s) per pixel but SamplesPerPixel is {samples}; "
            "the header is damaged"
        )
    if "PixelData" not in ds:
        return
    elem = ds["PixelData"]
    if not getattr(elem, "is_undefined_length", False):
        bits = _int(_get(ds, "BitsAllocated")) or 8
        frame = math.ceil(rows * cols * samples * bits / 8)
        have = len(elem.value or b"")
        if rows and cols and have > frame * (n_frames + 1):
            raise DecodeError(
                f"PixelData holds {have} bytes, more than the {frame * n_frames} that Rows={rows}, "
                f"Columns={cols}, SamplesPerPixel={samples}, BitsAllocated={bits} and {n_frames} frame(s) "
                "describe; the header is damaged"
            )
        return
    from pydicom.encaps import generate_fragments

    try:
        # the first item is the Basic Offset Table; the next one starts the first frame's codestream
        fragment = next(itertools.islice(generate_fragments(elem.value), 1, None), b"")
    except Exception:
        return  # the decoder reports unreadable fragments itself
    geometry = codestream_geometry(bytes(fragment[:65536]))
    if geometry is None:
        return
    c_rows, c_cols, c_comps = geometry
    if (c_rows and c_rows != rows) or c_cols != cols or c_comps != samples:
        raise DecodeError(
            f"the compressed frame is {c_rows}x{c_cols} with {c_comps} component(s), the header says "
            f"{rows}x{cols} with SamplesPerPixel={samples}; the header is damaged"
        )


def implies_pixels(ds: Any) -> bool:
    """Whether the header declares an image (Rows and Columns, or an image storage SOP class)."""
    if "Rows" in ds and "Columns" in ds and (_int(_get(ds, "Rows")) or 0) > 0:
        return True
    from pydicom.uid import UID

    for sop in (_get(ds, "SOPClassUID"), ds.file_meta.get("MediaStorageSOPClassUID")):
        if sop and "Image Storage" in UID(str(sop)).name:
            return True
    return False


#: Sequence delimitation item (FFFE,E0DD) with its zero length, little and big endian.
_SEQ_DELIMITERS = (b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"\xff\xfe\xe0\xdd\x00\x00\x00\x00")


def check_complete(ds: Any, total: int, start: int = 0) -> None:
    """Raise :class:`TruncatedFileError` when the file ends before its declared content.

    Two signs: a top-level element whose value is shorter than its declared length, or bytes left
    after the last element that are neither zero padding nor a whole element. When the last element
    has undefined length, its end is the last sequence delimiter in the file. Positions are relative
    to ``start``, where the dataset begins (the reader's ``value_tell`` counts from there).
    """
    source: bytes = getattr(ds, "_medimg_source", b"")
    end = 0
    last_tell = 0
    for elem in ds._dict.values():
        length = getattr(elem, "length", None)
        tell = getattr(elem, "value_tell", None)
        value = getattr(elem, "value", None)
        if length is None or tell is None:
            end = -1
            continue
        last_tell = tell
        if length == 0xFFFFFFFF:
            end = -1  # undefined length: found below from the delimiter
            continue
        if isinstance(value, bytes | bytearray) and len(value) < length:
            raise TruncatedFileError(
                f"element {elem.tag} declares {length} bytes but the file ends after {len(value)}; "
                "the file is truncated, re-export or re-transfer it"
            )
        end = tell + length
    if end < 0 and source:
        found = max(source.rfind(d) for d in _SEQ_DELIMITERS)
        end = found + 8 if found >= last_tell else -1
    if end > 0:
        rest = (total - start) - end
        if rest > 0 and source[end:].strip(b"\x00"):
            raise TruncatedFileError(
                f"{rest} trailing bytes after the last complete element at offset {start + end}: the next "
                "element is cut short; the file is truncated, re-export or re-transfer it"
            )


def _is_encapsulated(ds: Any) -> bool:
    elem = ds["PixelData"]
    return bool(getattr(elem, "is_undefined_length", False))


def _first_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, list | tuple) or (
            hasattr(value, "__len__") and not isinstance(value, str | bytes)
        ):
            value = value[0] if len(value) else None
            if value is None:
                return None
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _floats(value: Any) -> list[float] | None:
    if value is None or value == "":
        return None
    try:
        seq = list(value) if not isinstance(value, str | bytes | int | float) else [value]
        return [float(v) for v in seq]
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    """An integer value, or None when missing, not an integer, or outside the 32-bit column range."""
    try:
        n = None if value is None or value == "" else int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return n if n is None or -INT32_MAX - 1 <= n <= INT32_MAX else None


def _str(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value)
    return s or None


def _get(ds: Any, keyword: str) -> Any:
    try:
        return ds.get(keyword)
    except Exception:
        return None


def header_json(ds: Any) -> str:
    """The header (file meta + dataset) as DICOM JSON, bulk data and invalid values left out."""

    def bulk(elem: Any) -> str:
        return f"omitted:{elem.tag:08X}"

    out: dict[str, Any] = {}
    for part in (ds.file_meta, ds):
        try:
            out.update(
                part.to_json_dict(
                    bulk_data_threshold=BULK_DATA_THRESHOLD,
                    bulk_data_element_handler=bulk,
                    suppress_invalid_tags=True,
                )
            )
        except Exception:
            for elem in list(part):
                try:
                    from pydicom.dataset import Dataset

                    out.update(
                        Dataset({elem.tag: elem}).to_json_dict(
                            bulk_data_threshold=BULK_DATA_THRESHOLD, bulk_data_element_handler=bulk
                        )
                    )
                except Exception:
                    continue
    return json.dumps(out, sort_keys=True, ensure_ascii=False)


def _functional_group(item: Any, sequence: str, keyword: str) -> Any:
    """``item.<sequence>[0].<keyword>`` of a functional groups item (None when absent)."""
    seq = _get(item, sequence) if item is not None else None
    if not seq:
        return None
    try:
        return _get(seq[0], keyword)
    except (IndexError, TypeError):
        return None


def _orientation(value: Any) -> list[float] | None:
    """Six finite direction cosines (row then column), or None."""
    found = _floats(value)
    if found is None or len(found) != 6 or not all(math.isfinite(v) for v in found):
        return None
    return found


def _position(value: Any) -> list[float] | None:
    """Three finite LPS coordinates, or None."""
    found = _floats(value)
    if found is None or len(found) != 3 or not all(math.isfinite(v) for v in found):
        return None
    return found


def frame_geometry(ds: Any, n_frames: int) -> list[dict[str, Any]]:
    """Per-frame geometry (position, orientation, pixel spacing, slice thickness) and rescaling.

    Enhanced multi-frame objects carry them in functional groups: each frame's item of
    PerFrameFunctionalGroupsSequence (PlanePositionSequence, PlaneOrientationSequence,
    PixelMeasuresSequence, PixelValueTransformationSequence) wins over
    SharedFunctionalGroupsSequence. Multi-frame RT Dose places its
    frames along the slice normal at GridFrameOffsetVector offsets from ImagePositionPatient.
    """
    out: list[dict[str, Any]] = [{} for _ in range(n_frames)]
    per_frame = _get(ds, "PerFrameFunctionalGroupsSequence")
    shared_seq = _get(ds, "SharedFunctionalGroupsSequence")
    try:  # a damaged sequence gives no geometry rather than failing the frames
        shared = shared_seq[0] if shared_seq else None
        items = list(per_frame or [])
    except (TypeError, IndexError, KeyError, ValueError):
        shared, items = None, []
    if items or shared is not None:
        for i in range(n_frames):
            item = items[i] if i < len(items) else None
            geometry: dict[str, Any] = {}
            for group in (shared, item):  # the frame's own value wins
                if group is None:
                    continue
                pos = _position(_functional_group(group, "PlanePositionSequence", "ImagePositionPatient"))
                ori = _orientation(
                    _functional_group(group, "PlaneOrientationSequence", "ImageOrientationPatient")
                )
                spacing = _floats(_functional_group(group, "PixelMeasuresSequence", "PixelSpacing"))
                thickness = _first_float(_functional_group(group, "PixelMeasuresSequence", "SliceThickness"))
                transform = "PixelValueTransformationSequence"
                slope = _first_float(_functional_group(group, transform, "RescaleSlope"))
                intercept = _first_float(_functional_group(group, transform, "RescaleIntercept"))
                for key, value in (
                    ("image_position", pos),
                    ("image_orientation", ori),
                    ("pixel_spacing", spacing),
                    ("slice_thickness", thickness),
                    ("rescale_slope", slope),
                    ("rescale_intercept", intercept),
                ):
                    if value is not None:
                        geometry[key] = value
            out[i] = geometry
        return out
    offsets = _floats(_get(ds, "GridFrameOffsetVector"))
    origin = _position(_get(ds, "ImagePositionPatient"))
    orientation = _orientation(_get(ds, "ImageOrientationPatient"))
    if n_frames > 1 and offsets and len(offsets) >= n_frames and origin and orientation:
        normal = np.cross(orientation[:3], orientation[3:])
        for i in range(n_frames):
            # relative offsets (first 0) or absolute ones (first = the origin's): both from offsets[0]
            step = offsets[i] - offsets[0]
            out[i]["image_position"] = [float(v) for v in np.asarray(origin) + step * normal]
    return out


def _shared_spacing(ds: Any) -> list[float] | None:
    spacing = _floats(_get(ds, "PixelSpacing")) or _floats(_get(ds, "ImagerPixelSpacing"))
    if spacing:
        return spacing
    shared = _get(ds, "SharedFunctionalGroupsSequence")
    if shared:
        measures = _get(shared[0], "PixelMeasuresSequence")
        if measures:
            return _floats(_get(measures[0], "PixelSpacing"))
    return None


def stored_photometric(ds: Any, channels: int) -> str | None:
    """Photometric interpretation of the array ``pixel_array`` returns (pydicom converts YBR to RGB)."""
    pi = _str(_get(ds, "PhotometricInterpretation"))
    if pi and pi.startswith("YBR") and channels == 3:
        return "RGB"
    return pi


def _check_decoded_size(ds: Any, n_frames: int, size: int | None, max_decoded_bytes: int | None) -> None:
    """Refuse pixels whose decoding would need more than ``max_decoded_bytes`` (ImageTooLargeError)."""
    if max_decoded_bytes is not None and size is not None and size > max_decoded_bytes:
        raise ImageTooLargeError(
            f"decoding needs {size} bytes ({n_frames} frame(s) of {_int(_get(ds, 'Rows'))}x"
            f"{_int(_get(ds, 'Columns'))}), over ingest.max_decoded_bytes = {max_decoded_bytes}; "
            "raise the limit (and the worker memory) or split the file"
        )


def parse_dicom(
    data: bytes, deidentify: Callable[[Any], Any] | None = None, max_decoded_bytes: int | None = None
) -> ParsedFile:
    """Parse DICOM bytes; pixels decode lazily through :attr:`ParsedFile.decode`.

    Args:
        data: the file's bytes.
        deidentify: applied to the dataset before any metadata is extracted.
        max_decoded_bytes: refuse to decode pixels that would take more memory than this.

    Raises:
        NoPixelDataError: the header declares an image but the file holds no pixel data.
        InvalidHeaderError: a file-meta value or NumberOfFrames is malformed.
    """
    ds, recovered = read_dataset_bytes(data)
    has_pixels = any(k in ds for k in _PIXEL_KEYWORDS)
    if not has_pixels and implies_pixels(ds):
        raise NoPixelDataError(
            "the header declares an image (Rows/Columns or an image storage SOP class) but the file holds "
            "no pixel data; it is truncated or damaged, re-export it"
        )
    n_frames = number_of_frames(ds) if has_pixels else 0
    size = decoded_size(ds, n_frames) if has_pixels else None
    if deidentify is not None:
        # de-identification may decode the pixels (pixel rules, OCR): pixels over the decode limit are
        # hidden from it and put back undecoded, for decode() to refuse (ImageTooLargeError) as without deid
        oversize = max_decoded_bytes is not None and size is not None and size > max_decoded_bytes
        held = [ds.data_element(k) for k in _PIXEL_KEYWORDS if k in ds] if oversize else []
        for elem in held:
            del ds[elem.tag]
        try:
            ds = deidentify(ds)
            for elem in held:
                ds[elem.tag] = elem
        except Exception as exc:
            exc.medimg_stage = "deid"  # type: ignore[attr-defined]
            raise
    has_pixels = any(k in ds for k in _PIXEL_KEYWORDS)
    n_frames = n_frames if has_pixels else 0
    modality = _str(_get(ds, "Modality")) or "OT"
    sop_class = _str(_get(ds, "SOPClassUID")) or _str(ds.file_meta.get("MediaStorageSOPClassUID"))
    image_meta: dict[str, Any] = {
        "bits_stored": _int(_get(ds, "BitsStored")),
        "rescale_slope": _first_float(_get(ds, "RescaleSlope")),
        "rescale_intercept": _first_float(_get(ds, "RescaleIntercept")),
        "window_center": _first_float(_get(ds, "WindowCenter")),
        "window_width": _first_float(_get(ds, "WindowWidth")),
        "pixel_spacing": _shared_spacing(ds),
        "slice_thickness": _first_float(_get(ds, "SliceThickness")),
        "patient_id": _str(_get(ds, "PatientID")),
        "study_instance_uid": _str(_get(ds, "StudyInstanceUID")),
        "series_instance_uid": _str(_get(ds, "SeriesInstanceUID")),
        "sop_instance_uid": _str(_get(ds, "SOPInstanceUID")),
        "instance_number": _int(_get(ds, "InstanceNumber")),
        "image_position": _floats(_get(ds, "ImagePositionPatient")),
        "image_orientation": _orientation(_get(ds, "ImageOrientationPatient")),
        "frame_of_reference_uid": _str(_get(ds, "FrameOfReferenceUID")),
    }
    instance_meta = {
        "sop_class_uid": sop_class,
        "transfer_syntax_uid": _str(ds.file_meta.get("TransferSyntaxUID")),
        "patient_id": image_meta["patient_id"],
        "study_instance_uid": image_meta["study_instance_uid"],
        "series_instance_uid": image_meta["series_instance_uid"],
        "sop_instance_uid": image_meta["sop_instance_uid"],
        "header_json": header_json(ds),
    }

    def decode() -> Iterator[Frame]:
        _check_decoded_size(ds, n_frames, size, max_decoded_bytes)
        check_pixel_module(ds)
        check_pixel_header(ds, n_frames)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                arr = ds.pixel_array
            except (MedimgError, MemoryError):
                raise  # the time budget, or a failure that is not this codec's
            except BaseException as exc:
                if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
                    raise  # KeyboardInterrupt, SystemExit, GeneratorExit
                # pydicom and its plugins raise ValueError, RuntimeError ("exceptions were raised by all
                # available plugins") and more; a Rust codec raises PanicException (a BaseException): one
                # typed reason, with the codec's own words
                raise DecodeError(
                    f"the pixel data could not be decoded ({type(exc).__name__}): {exc}"
                ) from exc
        samples = _int(_get(ds, "SamplesPerPixel")) or 1
        frames = arr if n_frames > 1 else arr[np.newaxis, ...]
        rows, cols = _int(_get(ds, "Rows")), _int(_get(ds, "Columns"))
        expected = (n_frames, rows, cols, samples) if samples > 1 else (n_frames, rows, cols)
        if frames.shape != expected:
            raise DecodeError(
                f"decoded array has shape {arr.shape}, which does not match NumberOfFrames={n_frames}, "
                f"Rows={rows}, Columns={cols} and SamplesPerPixel={samples}; the header is damaged"
            )
        geometry = frame_geometry(ds, len(frames))
        photometric = stored_photometric(ds, samples)
        for i, frame in enumerate(frames):
            meta = {k: v for k, v in geometry[i].items() if v is not None}
            meta["photometric"] = photometric
            yield Frame(i, frame, meta)

    return ParsedFile(
        source_format="dicom",
        modality=modality,
        has_pixels=has_pixels,
        n_frames=n_frames,
        image_meta=image_meta,
        instance_meta=instance_meta,
        recovered=recovered,
        decode=decode if has_pixels else None,
    )
