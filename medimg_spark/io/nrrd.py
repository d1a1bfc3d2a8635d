"""NRRD (``.nrrd`` with attached data, ``.nhdr`` with a detached data file) through pynrrd.

The header is parsed with :func:`nrrd.read_header` and every size is checked before a voxel is
decoded: the declared data size against ``ingest.max_decoded_bytes`` and against the bytes present
(raw), and compressed data (``gzip``, ``bzip2``) is inflated with that bound, so a hostile header can
neither allocate a huge array nor inflate a bomb. Encodings: raw, gzip, bzip2, ASCII; ``hex`` and
multi-file data (``data file: LIST`` or a name pattern) are refused with a typed error.

Axes: the 2 or 3 *space* axes (those with a ``space directions`` vector, else those of kind
``domain``/``space``) and at most one other axis: of a colour/vector kind (``RGB-color``,
``vector``...) it becomes the frames' channels, of any other kind (``list``, ``time``...) each of its
indices is its own series (frames ``k + Z·t``, as NIfTI). Frames are ``data[:, :, k]`` of the array
in pynrrd's default Fortran order (``x, y, z``): a frame's rows run along the first space axis and its
columns along the second, as nibabel gives NIfTI slices.

Geometry is converted to LPS as ITK (and 3D Slicer) read NRRD: ``right-anterior-superior`` negates
x and y, ``left-anterior-superior`` negates y, ``left-posterior-superior``, ``scanner-xyz`` and the
``3D-*-handed`` spaces are taken as they are; without ``space directions`` the axes are the identity
scaled by ``spacings`` (1 when absent) at origin 0. Time spaces (``...-time``) are refused.
Study, series and frame of reference UIDs are derived from the content hash
(:func:`medimg_spark.io.geometry.derived_uid`); a detached pair's content hash covers the header and
its data file (:func:`medimg_spark.io.detached.combined_sha256`).
"""

from __future__ import annotations

import bz2
import io
import json
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from medimg_spark.errors import (
    DecodeError,
    ImageTooLargeError,
    InvalidHeaderError,
    NoPixelDataError,
    TruncatedFileError,
    UnsupportedFormatError,
)
from medimg_spark.io.detached import data_region
from medimg_spark.io.geometry import derived_uid, slice_geometry
from medimg_spark.io.model import Frame, ParsedFile

if TYPE_CHECKING:
    from medimg_spark.io.files import FileContext

#: Longest header read (an attached header ends at its first blank line).
MAX_HEADER_BYTES = 1 << 20
#: Largest frame count the ``n_frames`` column holds.
_INT32_MAX = 2**31 - 1

_ENCODINGS = {
    "raw": "raw",
    "gzip": "gzip",
    "gz": "gzip",
    "bzip2": "bzip2",
    "bz2": "bzip2",
    "ascii": "ascii",
    "text": "ascii",
    "txt": "ascii",
}
#: Sign of each LPS axis per NRRD ``space`` (as ITK's NrrdImageIO converts to LPS).
_SPACE_TO_LPS: dict[str, tuple[float, float, float]] = {
    "left-posterior-superior": (1.0, 1.0, 1.0),
    "lps": (1.0, 1.0, 1.0),
    "right-anterior-superior": (-1.0, -1.0, 1.0),
    "ras": (-1.0, -1.0, 1.0),
    "left-anterior-superior": (1.0, -1.0, 1.0),
    "las": (1.0, -1.0, 1.0),
    "scanner-xyz": (1.0, 1.0, 1.0),
    "3d-right-handed": (1.0, 1.0, 1.0),
    "3d-left-handed": (1.0, 1.0, 1.0),
}
#: Kinds of a non-space axis whose values are one pixel's components (channels).
_CHANNEL_KINDS = frozenset(
    {
        "rgb-color",
        "rgba-color",
        "3-color",
        "4-color",
        "hsv-color",
        "xyz-color",
        "vector",
        "covariant-vector",
        "normal",
        "2-vector",
        "3-vector",
        "4-vector",
        "3-gradient",
        "3-normal",
        "point",
        "complex",
        "quaternion",
    }
)
_COLOUR_KINDS = frozenset({"rgb-color", "3-color"})
#: Header fields kept in ``header_json`` (structural only: free text such as ``content``, ``labels``,
#: ``units`` and key/value pairs may carry identifiers and are left out).
_JSON_FIELDS = (
    "type",
    "dimension",
    "space",
    "space dimension",
    "sizes",
    "space directions",
    "space origin",
    "kinds",
    "spacings",
    "thicknesses",
    "centerings",
    "endian",
    "encoding",
    "byte skip",
    "line skip",
)


@dataclass(frozen=True)
class NrrdLayout:
    """What a NRRD header declares, checked.

    Attributes:
        dtype: the stored sample type (byte order included).
        sizes: the size of each file axis, fastest first.
        spatial: the file axes that are space axes (2 or 3), in order (x, y[, z]).
        extra: the one other axis, if any.
        channels: ``extra`` holds a pixel's components (else one series per index).
        encoding: ``raw``, ``gzip``, ``bzip2`` or ``ascii``.
        line_skip: lines skipped before the data.
        byte_skip: bytes skipped before the (decompressed) data; -1: the data ends the file.
        data_file: the detached data file's name (None: attached).
        affine_lps: 4x4 array-index (space axes) to LPS mm matrix; a 2-D image's third column is its
            unit normal.
        thickness: slice thickness, mm: the third space axis' ``thicknesses`` value, else its step.
        photometric: of the frames (``MONOCHROME2``, ``RGB`` or None for other components).
    """

    dtype: np.dtype
    sizes: tuple[int, ...]
    spatial: tuple[int, ...]
    extra: int | None
    channels: bool
    encoding: str
    line_skip: int
    byte_skip: int
    data_file: str | None
    affine_lps: np.ndarray
    thickness: float | None
    photometric: str | None

    @property
    def n_values(self) -> int:
        """Samples the data holds."""
        return math.prod(self.sizes)

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded data."""
        return self.n_values * self.dtype.itemsize

    @property
    def n_slices(self) -> int:
        """Frames per series (the third space axis' size, 1 for a 2-D image)."""
        return self.sizes[self.spatial[2]] if len(self.spatial) == 3 else 1

    @property
    def n_series(self) -> int:
        """Series in the file (the size of a non-channel extra axis, else 1)."""
        return self.sizes[self.extra] if self.extra is not None and not self.channels else 1


def read_header(data: bytes) -> tuple[dict[str, Any], int]:
    """Parse the header at the start of ``data`` with pynrrd.

    Returns:
        ``(header, data_offset)``: the fields and the offset of the first byte after the header.

    Raises:
        InvalidHeaderError: the header is malformed or longer than :data:`MAX_HEADER_BYTES`.
    """
    import nrrd

    head = data[:MAX_HEADER_BYTES]
    if len(data) > MAX_HEADER_BYTES and b"\n\n" not in head and b"\n\r\n" not in head:
        raise InvalidHeaderError(
            f"NRRD header is longer than {MAX_HEADER_BYTES} bytes (no blank line ends it); the file is damaged"
        )
    fh = io.BytesIO(head)
    try:
        header = dict(nrrd.read_header(fh))
    except Exception as err:  # pynrrd raises NRRDError, ValueError, IndexError... on malformed fields
        raise InvalidHeaderError(f"NRRD header is malformed: {err}; fix or re-export the file") from None
    return header, fh.tell()


def _int_field(header: dict[str, Any], *names: str, default: int = 0) -> int:
    for name in names:
        if name in header:
            return int(header[name])
    return default


#: NRRD sample types (every spelling the format allows) → numpy type codes.
_TYPES = {
    name: code
    for code, names in {
        "i1": ("signed char", "int8", "int8_t"),
        "u1": ("uchar", "unsigned char", "uint8", "uint8_t"),
        "i2": ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
        "u2": ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
        "i4": ("int", "signed int", "int32", "int32_t"),
        "u4": ("uint", "unsigned int", "uint32", "uint32_t"),
        "i8": (
            "longlong",
            "long long",
            "long long int",
            "signed long long",
            "signed long long int",
            "int64",
            "int64_t",
        ),
        "u8": ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
        "f4": ("float",),
        "f8": ("double",),
    }.items()
    for name in names
}


def _dtype(header: dict[str, Any], encoding: str) -> np.dtype:
    name = str(header["type"]).strip()
    code = _TYPES.get(name)
    if code is None:
        raise UnsupportedFormatError(
            f"NRRD sample type {name!r} is not supported; store integer or float samples"
        )
    dtype = np.dtype(code)
    if dtype.itemsize > 1 and encoding != "ascii":
        endian = str(header.get("endian", "")).strip().lower()
        if endian not in ("little", "big"):
            raise InvalidHeaderError(
                f"NRRD header of {name} samples needs `endian: little` or `endian: big` (got {endian or 'none'})"
            )
        dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    return dtype


def _space_axes(header: dict[str, Any], dimension: int) -> tuple[tuple[int, ...], np.ndarray | None]:
    """The space axes and, when the header has them, the space directions (rows: file axes)."""
    if "space directions" in header:
        dirs = np.asarray(header["space directions"], dtype=np.float64)
        if dirs.ndim != 2 or dirs.shape[0] != dimension or dirs.shape[1] not in (2, 3):
            raise InvalidHeaderError(
                f"NRRD `space directions` has shape {dirs.shape}, expected one 2- or 3-vector (or none) per axis "
                f"of the {dimension} axes; fix the header"
            )
        finite = np.isfinite(dirs)
        if np.any(finite.any(axis=1) & ~finite.all(axis=1)):
            raise InvalidHeaderError(
                "NRRD `space directions` holds a vector with nan/inf values; fix the header"
            )
        return tuple(i for i in range(dimension) if finite[i].all()), dirs
    kinds = [str(k).lower() for k in header.get("kinds", [])]
    if kinds and len(kinds) != dimension:
        raise InvalidHeaderError(f"NRRD `kinds` names {len(kinds)} axes, the header has {dimension}")
    if kinds:
        return tuple(i for i, k in enumerate(kinds) if k in ("domain", "space")), None
    return tuple(range(min(dimension, 3))), None


def _affine(header: dict[str, Any], spatial: tuple[int, ...], dirs: np.ndarray | None) -> np.ndarray:
    """The array-index (space axes) to LPS matrix (see :class:`NrrdLayout`)."""
    space = str(header.get("space", "")).strip().lower()
    if space and space not in _SPACE_TO_LPS:
        raise UnsupportedFormatError(
            f"NRRD space {header['space']!r} is not supported (time spaces and unknown names); re-export the "
            "volume in left-posterior-superior or right-anterior-superior space"
        )
    if not space and "space dimension" in header and int(header["space dimension"]) not in (2, 3):
        raise UnsupportedFormatError(
            f"NRRD `space dimension: {header['space dimension']}` is not supported; 2 or 3 space axes are"
        )
    flips = np.array(_SPACE_TO_LPS.get(space, (1.0, 1.0, 1.0)))
    a = np.eye(4)
    if dirs is not None:
        for col, axis in enumerate(spatial):
            a[:3, col] = 0.0
            a[: dirs.shape[1], col] = dirs[axis]
        origin = np.asarray(header.get("space origin", np.zeros(dirs.shape[1])), dtype=np.float64).ravel()
        if origin.shape != (dirs.shape[1],) or not np.isfinite(origin).all():
            raise InvalidHeaderError(
                f"NRRD `space origin` {origin.tolist()} does not match the space dimension {dirs.shape[1]}; "
                "fix the header"
            )
        a[:3, 3] = 0.0
        a[: dirs.shape[1], 3] = origin
    else:
        spacings = list(header.get("spacings", []))
        for col, axis in enumerate(spatial):
            step = float(spacings[axis]) if axis < len(spacings) else math.nan
            a[col, col] = step if math.isfinite(step) and step > 0 else 1.0
    a[:3, :] *= flips[:, None]
    if len(spatial) == 2:
        normal = np.cross(a[:3, 0], a[:3, 1])
        norm = float(np.linalg.norm(normal))
        a[:3, 2] = normal / norm if norm > 0 else np.array([0.0, 0.0, 1.0])
    steps = np.linalg.norm(a[:3, :3], axis=0)
    if not np.isfinite(a).all() or np.any(steps == 0) or abs(float(np.linalg.det(a[:3, :3]))) < 1e-12:
        raise InvalidHeaderError(
            "NRRD `space directions` are zero or parallel (a degenerate grid); fix the header"
        )
    return a


def _thickness(header: dict[str, Any], spatial: tuple[int, ...], affine: np.ndarray) -> float | None:
    """The slice axis' ``thicknesses`` value, else its step; None for a 2-D image."""
    if len(spatial) != 3:
        return None
    given = list(header.get("thicknesses", []))
    value = float(given[spatial[2]]) if spatial[2] < len(given) else math.nan
    return value if math.isfinite(value) and value > 0 else float(np.linalg.norm(affine[:3, 2]))


def layout(header: dict[str, Any]) -> NrrdLayout:
    """Check a parsed header and describe its data (see :class:`NrrdLayout`).

    Raises:
        InvalidHeaderError: missing or inconsistent fields.
        UnsupportedFormatError: a valid header this reader does not handle (encoding, axes, space).
        NoPixelDataError: a size of 0.
    """
    for name in ("dimension", "type", "encoding", "sizes"):
        if name not in header:
            raise InvalidHeaderError(f"NRRD header has no `{name}` field (required); fix the header")
    dimension = int(header["dimension"])
    sizes = tuple(int(s) for s in np.asarray(header["sizes"]).ravel())
    if len(sizes) != dimension:
        raise InvalidHeaderError(f"NRRD `sizes` lists {len(sizes)} axes but `dimension` is {dimension}")
    if any(s < 0 for s in sizes) or any(s > _INT32_MAX for s in sizes):
        raise InvalidHeaderError(f"NRRD `sizes` {list(sizes)} are out of range; the header is damaged")
    if any(s == 0 for s in sizes):
        raise NoPixelDataError(f"NRRD image has an empty size {list(sizes)}")
    encoding = _ENCODINGS.get(str(header["encoding"]).strip().lower())
    if encoding is None:
        raise UnsupportedFormatError(
            f"NRRD encoding {header['encoding']!r} is not supported (raw, gzip, bzip2, ascii); re-save the "
            "file with one of them (e.g. SimpleITK.WriteImage(img, 'x.nrrd', useCompression=True))"
        )
    dtype = _dtype(header, encoding)
    spatial, dirs = _space_axes(header, dimension)
    extras = [i for i in range(dimension) if i not in spatial]
    if len(spatial) not in (2, 3) or len(extras) > 1:
        raise UnsupportedFormatError(
            f"NRRD image with {len(spatial)} space axes and {len(extras)} other axes (sizes {list(sizes)}); "
            "2-D or 3-D images with at most one list/vector/time axis are supported: split the file"
        )
    extra = extras[0] if extras else None
    kinds = [str(k).lower() for k in header.get("kinds", [])]
    extra_kind = kinds[extra] if extra is not None and len(kinds) == dimension else ""
    channels = extra is not None and extra_kind in _CHANNEL_KINDS
    data_file = header.get("data file", header.get("datafile"))
    if data_file is not None:
        data_file = str(data_file).strip()
        if data_file.upper() == "LIST" or data_file.upper().startswith("LIST ") or len(data_file.split()) > 1:
            raise UnsupportedFormatError(
                "NRRD data split over several files (`data file: LIST` or a name pattern) is not supported; "
                "save the volume as one .nrrd"
            )
    line_skip = _int_field(header, "line skip", "lineskip")
    byte_skip = _int_field(header, "byte skip", "byteskip")
    if line_skip < 0 or byte_skip < -1:
        raise InvalidHeaderError(
            f"NRRD `line skip: {line_skip}` / `byte skip: {byte_skip}` are invalid (line skip >= 0, byte skip "
            ">= -1); fix the header"
        )
    affine = _affine(header, spatial, dirs)
    thickness = _thickness(header, spatial, affine)
    n_channels = sizes[extra] if channels and extra is not None else 1
    if n_channels == 1:
        photometric: str | None = "MONOCHROME2"
    elif n_channels == 3 and extra_kind in _COLOUR_KINDS:
        photometric = "RGB"
    else:
        photometric = None
    return NrrdLayout(
        dtype=dtype,
        sizes=sizes,
        spatial=spatial,
        extra=extra,
        channels=channels,
        encoding=encoding,
        line_skip=line_skip,
        byte_skip=byte_skip,
        data_file=data_file,
        affine_lps=affine,
        thickness=thickness,
        photometric=photometric,
    )


def _skip_lines(region: bytes | memoryview, lines: int) -> int:
    if lines == 0:
        return 0
    region = bytes(region)  # rare: a copy to search for line ends
    pos = 0
    for _ in range(lines):
        nl = region.find(b"\n", pos)
        if nl < 0:
            raise TruncatedFileError(f"NRRD data ends within its `line skip: {lines}` lines; it is truncated")
        pos = nl + 1
    return pos


def check_size(lay: NrrdLayout, region: bytes | memoryview, max_decoded_bytes: int | None) -> None:
    """Bound the declared data before decoding.

    Raises:
        InvalidHeaderError: more frames than 32 bits count.
        ImageTooLargeError: the data needs more than ``max_decoded_bytes``.
        TruncatedFileError: fewer bytes present than raw (or ASCII) data of that size needs.
    """
    frames = lay.n_slices * lay.n_series
    if frames > _INT32_MAX:
        raise InvalidHeaderError(
            f"NRRD header declares {frames} frames (sizes {list(lay.sizes)}); it is damaged"
        )
    need = lay.nbytes
    if max_decoded_bytes is not None and need > max_decoded_bytes:
        raise ImageTooLargeError(
            f"NRRD image needs {need} bytes (sizes {list(lay.sizes)}, {lay.dtype.name}), over "
            f"ingest.max_decoded_bytes = {max_decoded_bytes}; raise the limit (and the worker memory) or split it"
        )
    start = _skip_lines(region, lay.line_skip)
    available = len(region) - start - max(lay.byte_skip, 0)
    if lay.encoding == "raw" and need > available:
        raise TruncatedFileError(
            f"NRRD header declares {need} bytes of raw data (sizes {list(lay.sizes)}) but {max(available, 0)} "
            "are present; the file is truncated or its header is damaged"
        )
    if lay.encoding == "ascii" and lay.n_values > available // 2 + 1:
        raise TruncatedFileError(
            f"NRRD header declares {lay.n_values} ASCII values but only {max(available, 0)} bytes follow; the "
            "file is truncated"
        )
    if lay.encoding in ("gzip", "bzip2") and available <= 0:
        raise TruncatedFileError(
            "NRRD header declares compressed data but none follows; the file is truncated"
        )


def inflate(encoding: str, src: bytes | memoryview, limit: int, what: str = "NRRD") -> bytearray:
    """Decompress ``src`` (``gzip``: gzip or zlib stream; ``bzip2``) to at most ``limit`` bytes, the size
    the header declares: no bomb can grow past it, and a short result means cut data.

    Raises:
        DecodeError: the stream is corrupt.
    """
    out = bytearray()
    try:
        if encoding == "gzip":
            z = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header
            out += z.decompress(src, limit)
            while z.unconsumed_tail and len(out) < limit:
                out += z.decompress(z.unconsumed_tail, limit - len(out))
        else:
            b = bz2.BZ2Decompressor()
            out += b.decompress(src, limit)
            while not b.eof and not b.needs_input and len(out) < limit:
                out += b.decompress(b"", limit - len(out))
    except (zlib.error, OSError, EOFError, ValueError) as err:
        raise DecodeError(f"{what} {encoding} data is corrupt ({err}); re-export the file") from None
    return out


def decode_array(lay: NrrdLayout, region: bytes | memoryview) -> np.ndarray:
    """The data as an array of shape ``sizes`` in Fortran index order (pynrrd's default).

    Raises:
        TruncatedFileError: the (decompressed) data holds fewer samples than declared.
        DecodeError: corrupt compressed data or ASCII values that do not parse.
    """
    start = _skip_lines(region, lay.line_skip)
    need = lay.nbytes
    body = memoryview(region)[start:]  # views, not copies, of a possibly large buffer
    buf: memoryview
    if lay.encoding == "ascii":
        text = bytes(body[max(lay.byte_skip, 0) :]).decode("latin-1")
        values = np.fromstring(text, dtype=np.float64, sep=" ")  # text mode (sep) is not deprecated
        if values.size < lay.n_values:
            raise TruncatedFileError(
                f"NRRD ASCII data holds {values.size} of the {lay.n_values} values its header declares (sizes "
                f"{list(lay.sizes)}); the file is truncated"
            )
        flat = values[: lay.n_values]
        cast = flat.astype(lay.dtype)
        if lay.dtype.kind in "iu" and not np.array_equal(cast, flat):
            raise DecodeError(f"NRRD ASCII values do not fit its {lay.dtype.name} type; fix the file")
        return cast.reshape(lay.sizes[::-1]).T
    if lay.encoding == "raw":
        buf = body[-need:] if lay.byte_skip == -1 else body[lay.byte_skip : lay.byte_skip + need]
    else:
        skip = max(lay.byte_skip, 0)
        raw = memoryview(
            inflate(lay.encoding, body, need + skip if lay.byte_skip >= 0 else _tail_limit(need))
        )
        buf = raw[-need:] if lay.byte_skip == -1 else raw[skip : skip + need]
    if len(buf) < need:
        raise TruncatedFileError(
            f"NRRD data holds {len(buf)} of the {need} bytes its header declares (sizes {list(lay.sizes)}); the "
            "file is truncated"
        )
    flat = np.frombuffer(buf, dtype=lay.dtype, count=lay.n_values)
    return flat.reshape(lay.sizes[::-1]).T


def _tail_limit(need: int) -> int:
    """Inflation bound of compressed data with ``byte skip: -1`` (the data is the stream's tail)."""
    return need + (1 << 20)


def frames(lay: NrrdLayout, array: np.ndarray, sha: str) -> Iterator[Frame]:
    """The frames of a decoded array: ``k + Z·t`` (``t``: index along a non-channel extra axis)."""
    order = (*lay.spatial, *((lay.extra,) if lay.extra is not None else ()))
    vol = np.transpose(array, order)
    if len(lay.spatial) == 2:  # a single slice: give it a slice axis of size 1
        vol = vol[:, :, np.newaxis, ...]
    z = lay.n_slices
    geometry = [slice_geometry(lay.affine_lps, k, 0, 1) for k in range(z)]
    for t in range(lay.n_series):
        series = derived_uid("series", sha, t)
        for k in range(z):
            if lay.extra is None:
                sl = vol[:, :, k]
            elif lay.channels:
                sl = vol[:, :, k, :]
            else:
                sl = vol[:, :, k, t]
            geo = geometry[k]
            meta: dict[str, Any] = {
                "photometric": lay.photometric,
                "instance_number": k,
                "series_instance_uid": series,
                "image_position": geo.image_position,
                "image_orientation": geo.image_orientation,
                "pixel_spacing": geo.pixel_spacing,
            }
            yield Frame(k + z * t, np.ascontiguousarray(sl), meta)


def _json_value(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and not all(isinstance(v, int | float) for v in value):
        return [str(v) for v in value]
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        return str(value)
    return _finite(arr.astype(float).tolist())


def _finite(value: Any) -> Any:
    """Lists of floats with nan/inf as None (JSON has no nan)."""
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value if math.isfinite(value) else None


def header_json(header: dict[str, Any]) -> str:
    """The structural header fields as JSON (see :data:`_JSON_FIELDS`: free text is left out)."""
    return json.dumps({k: _json_value(header[k]) for k in _JSON_FIELDS if k in header}, sort_keys=True)


def parse_nrrd(data: bytes, ctx: FileContext) -> ParsedFile:
    """Parse NRRD bytes (attached data, or a detached header whose data file is read next to it).

    Raises:
        InvalidHeaderError, UnsupportedFormatError, NoPixelDataError, ImageTooLargeError,
        TruncatedFileError: from the header, before any voxel is decoded.
        DetachedDataError, FileTooLargeError: the detached data file cannot be read.
    """
    header, offset = read_header(data)
    lay = layout(header)
    found = data_region(data, offset, lay.data_file, ctx.source_path, ctx.max_file_bytes, "NRRD header")
    region, sha, identity = found.region, found.sha, found.identity
    check_size(lay, region, ctx.max_decoded_bytes)

    def decode() -> Iterator[Frame]:
        yield from frames(lay, decode_array(lay, region), sha)

    study = derived_uid("study", sha)
    first = slice_geometry(lay.affine_lps, 0, 0, 1)
    return ParsedFile(
        source_format="nrrd",
        modality=ctx.default_modality,
        has_pixels=True,
        n_frames=lay.n_slices * lay.n_series,
        image_meta={
            "rescale_slope": None,
            "rescale_intercept": None,
            "pixel_spacing": first.pixel_spacing,
            "slice_thickness": lay.thickness,
            "bits_stored": int(lay.dtype.itemsize * 8),
            "study_instance_uid": study,
            "frame_of_reference_uid": derived_uid("frame_of_reference", sha),
        },
        instance_meta={
            "header_json": header_json(header),
            "study_instance_uid": study,
            "series_instance_uid": derived_uid("series", sha, 0) if lay.n_series == 1 else None,
        },
        decode=decode,
        content_sha256=identity,
    )
