"""MetaImage (``.mha`` with attached data, ``.mhd`` with a detached ``ElementDataFile``) through SimpleITK.

SimpleITK is the ``itk`` extra (``pip install 'medimg-spark[itk]'``), imported when a MetaImage file
is parsed: without it the file is quarantined as :class:`SimpleITKMissingError`. The text header is
parsed here first and its sizes are bounded before SimpleITK decodes anything (the declared voxel
bytes against ``ingest.max_decoded_bytes`` and against the bytes present); SimpleITK then reads the
checked bytes from a private temporary copy (a detached data file through the same checks as NRRD's,
see :mod:`medimg_spark.io.detached`).

2-D and 3-D images, with any number of channels; 4-D images, ``ElementDataFile = LIST`` and file
name patterns are refused with a typed error. Frames are ``GetArrayFromImage(img)[k]`` (rows along y,
columns along x); SimpleITK's origin, spacing and direction are LPS already, so the frames' positions
are :func:`~medimg_spark.io.geometry.slice_geometry` of the index-to-LPS matrix with
``row_axis=1, col_axis=0``. ``Modality = MET_MOD_CT`` (``MR``, ``NM``, ``US``) sets the modality.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from medimg_spark.errors import (
    DecodeError,
    ImageTooLargeError,
    IngestFileError,
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

INSTALL_HINT = "pip install 'medimg-spark[itk]'"
#: Longest header read (it ends with the ``ElementDataFile`` line).
MAX_HEADER_BYTES = 64 << 10
_INT32_MAX = 2**31 - 1

#: Bytes per sample of each MetaImage element type (MetaIO's MET_ValueTypeSize).
ELEMENT_SIZES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 4,
    "MET_ULONG": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}
_MODALITIES = {"MET_MOD_CT": "CT", "MET_MOD_MR": "MR", "MET_MOD_NM": "NM", "MET_MOD_US": "US"}
#: Header fields kept in ``header_json`` (structural only: ``Name``, ``Comment``, dates and other
#: free text may carry identifiers and are left out).
_JSON_FIELDS = (
    "ObjectType",
    "NDims",
    "BinaryData",
    "BinaryDataByteOrderMSB",
    "CompressedData",
    "CompressedDataSize",
    "TransformMatrix",
    "Offset",
    "CenterOfRotation",
    "AnatomicalOrientation",
    "ElementSpacing",
    "DimSize",
    "ElementNumberOfChannels",
    "ElementType",
    "HeaderSize",
    "Modality",
)
_LINE = re.compile(rb"[ \t]*([A-Za-z_][^=\r\n\x00]*?)[ \t]*=[ \t]*([^\r\n\x00]*?)[ \t]*(?:\r?\n|$)")


class SimpleITKMissingError(IngestFileError):
    """A MetaImage file was found but SimpleITK (the ``itk`` extra) is not installed."""


@dataclass(frozen=True)
class MetaHeader:
    """A MetaImage header, checked.

    Attributes:
        fields: every ``Key = Value`` field (text values).
        dims: ``DimSize`` (x, y[, z]).
        channels: ``ElementNumberOfChannels``.
        itemsize: bytes per sample of ``ElementType``.
        compressed: ``CompressedData``.
        compressed_size: ``CompressedDataSize`` when given.
        header_size: ``HeaderSize`` (bytes skipped in the data file; -1: the data ends the file).
        data_file: the detached data file's name (None: ``LOCAL``).
    """

    fields: dict[str, str]
    dims: tuple[int, ...]
    channels: int
    itemsize: int
    compressed: bool
    compressed_size: int | None
    header_size: int
    data_file: str | None

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded voxels."""
        return math.prod(self.dims) * self.channels * self.itemsize

    @property
    def n_slices(self) -> int:
        """Frames (z size; 1 for a 2-D image)."""
        return self.dims[2] if len(self.dims) == 3 else 1


def _bool(fields: dict[str, str], key: str, default: bool) -> bool:
    value = fields.get(key)
    if value is None:
        return default
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise InvalidHeaderError(f"MetaImage `{key} = {value}` is not True/False; fix the header")


def _ints(fields: dict[str, str], key: str) -> list[int]:
    try:
        return [int(v) for v in fields[key].split()]
    except ValueError:
        raise InvalidHeaderError(f"MetaImage `{key} = {fields[key]}` is not a list of integers") from None


def _floats(fields: dict[str, str], key: str) -> list[float]:
    try:
        return [float(v) for v in fields[key].split()]
    except ValueError:
        raise InvalidHeaderError(
            f"MetaImage `{key} = {fields[key]}` is not a list of numbers; fix the header"
        ) from None


def read_header(data: bytes) -> tuple[MetaHeader, int]:
    """Parse and check the text header at the start of ``data``.

    Returns:
        ``(header, data_offset)``: the checked header and the offset of the first byte after it.

    Raises:
        InvalidHeaderError: a malformed or missing field.
        UnsupportedFormatError: a valid header this reader does not handle (4-D, LIST, patterns).
        NoPixelDataError: a size of 0.
    """
    head = data[:MAX_HEADER_BYTES]
    fields: dict[str, str] = {}
    pos = 0
    while True:
        m = _LINE.match(head, pos)
        if m is None or m.end() == pos:
            raise InvalidHeaderError(
                f"MetaImage header has no `ElementDataFile` line within {MAX_HEADER_BYTES} bytes (or a line that "
                "is not `Key = Value`); the header is damaged"
            )
        key, value = m.group(1).decode("latin-1"), m.group(2).decode("latin-1")
        fields[key] = value
        pos = m.end()
        if key == "ElementDataFile":
            break
    if "NDims" not in fields or "DimSize" not in fields or "ElementType" not in fields:
        raise InvalidHeaderError(
            "MetaImage header needs `NDims`, `DimSize` and `ElementType`; fix the header"
        )
    try:
        ndims = int(fields["NDims"])
    except ValueError:
        raise InvalidHeaderError(f"MetaImage `NDims = {fields['NDims']}` is not an integer") from None
    if ndims not in (2, 3):
        raise UnsupportedFormatError(
            f"MetaImage with NDims = {ndims}: 2-D and 3-D images are supported; split the image into volumes"
        )
    dims = tuple(_ints(fields, "DimSize"))
    if len(dims) != ndims or any(d < 0 or d > _INT32_MAX for d in dims):
        raise InvalidHeaderError(
            f"MetaImage `DimSize = {fields['DimSize']}` does not give {ndims} sizes in range"
        )
    if any(d == 0 for d in dims):
        raise NoPixelDataError(f"MetaImage image has an empty size {list(dims)}")
    etype = fields["ElementType"].strip()
    if etype not in ELEMENT_SIZES:
        raise UnsupportedFormatError(
            f"MetaImage `ElementType = {etype}` is not supported ({', '.join(ELEMENT_SIZES)})"
        )
    channels = _ints(fields, "ElementNumberOfChannels")[0] if "ElementNumberOfChannels" in fields else 1
    if not 1 <= channels <= 64:
        raise InvalidHeaderError(f"MetaImage `ElementNumberOfChannels = {channels}` is out of range (1..64)")
    compressed_size = _ints(fields, "CompressedDataSize")[0] if "CompressedDataSize" in fields else None
    header_size = _ints(fields, "HeaderSize")[0] if "HeaderSize" in fields else 0
    if header_size < -1:
        raise InvalidHeaderError(f"MetaImage `HeaderSize = {header_size}` is invalid (>= -1)")
    name = fields["ElementDataFile"].strip()
    if name.upper() == "LIST" or len(name.split()) > 1:
        raise UnsupportedFormatError(
            "MetaImage data split over several files (`ElementDataFile = LIST` or a name pattern) is not "
            "supported; save the volume as one .mha"
        )
    if not name:
        raise InvalidHeaderError("MetaImage `ElementDataFile` is empty; name LOCAL or the data file")
    for key, count in (
        ("ElementSpacing", ndims),
        ("ElementSize", ndims),
        ("Offset", ndims),
        ("Position", ndims),
        ("Origin", ndims),
        ("TransformMatrix", ndims * ndims),
        ("Rotation", ndims * ndims),
        ("Orientation", ndims * ndims),
    ):
        if key in fields:
            values = _floats(fields, key)
            if len(values) != count or not all(math.isfinite(v) for v in values):
                raise InvalidHeaderError(
                    f"MetaImage `{key} = {fields[key]}` needs {count} finite numbers for NDims = {ndims}; fix the header"
                )
            if key in ("ElementSpacing", "ElementSize") and any(v == 0 for v in values):
                raise InvalidHeaderError(
                    f"MetaImage `{key} = {fields[key]}` has a zero spacing; fix the header"
                )
    if not _bool(fields, "BinaryData", True):
        raise UnsupportedFormatError(
            "MetaImage with `BinaryData = False` (ASCII voxels) is not supported; re-save it with SimpleITK"
        )
    header = MetaHeader(
        fields=fields,
        dims=dims,
        channels=channels,
        itemsize=ELEMENT_SIZES[etype],
        compressed=_bool(fields, "CompressedData", False),
        compressed_size=compressed_size,
        header_size=header_size,
        data_file=None if name.upper() == "LOCAL" else name,
    )
    return header, pos


def check_size(header: MetaHeader, region: bytes | memoryview, max_decoded_bytes: int | None) -> None:
    """Bound the declared voxels before SimpleITK decodes them.

    Raises:
        ImageTooLargeError: the voxels need more than ``max_decoded_bytes``.
        TruncatedFileError: fewer data bytes present than the header declares.
    """
    need = header.nbytes
    dims = list(header.dims)
    if max_decoded_bytes is not None and need > max_decoded_bytes:
        raise ImageTooLargeError(
            f"MetaImage needs {need} bytes (DimSize {dims}, {header.channels} channel(s)), over "
            f"ingest.max_decoded_bytes = {max_decoded_bytes}; raise the limit (and the worker memory) or split it"
        )
    available = len(region) - max(header.header_size, 0)
    if header.compressed:
        if available <= 0 or (header.compressed_size is not None and header.compressed_size > available):
            raise TruncatedFileError(
                f"MetaImage declares {header.compressed_size or 'some'} bytes of compressed data but "
                f"{max(available, 0)} are present; the file is truncated"
            )
    elif need > available:
        raise TruncatedFileError(
            f"MetaImage declares {need} bytes of voxels (DimSize {dims}) but {max(available, 0)} are present; "
            "the file is truncated or its header is damaged"
        )


def _sitk() -> Any:
    try:
        import SimpleITK
    except ImportError:
        raise SimpleITKMissingError(
            f"MetaImage (.mha/.mhd) is read with SimpleITK, which is not installed: {INSTALL_HINT}"
        ) from None
    return SimpleITK


def index_to_lps(image: Any) -> np.ndarray:
    """The 4x4 ITK index (x, y, z) to LPS mm matrix of a SimpleITK image (2-D images: z is the normal)."""
    n = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(n, n)
    a = np.eye(4)
    a[:n, :n] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)[np.newaxis, :]
    a[:n, 3] = image.GetOrigin()
    return a


def _plain_header(header: MetaHeader) -> bytes:
    """The header for SimpleITK's copy: uncompressed data in ``image.raw`` right at its start."""
    drop = ("CompressedData", "CompressedDataSize", "HeaderSize", "ElementDataFile")
    lines = [f"{k} = {v}" for k, v in header.fields.items() if k not in drop]
    return (
        "\n".join([*lines, "CompressedData = False", "HeaderSize = 0", "ElementDataFile = image.raw"]) + "\n"
    ).encode("latin-1")


def voxel_bytes(header: MetaHeader, region: bytes | memoryview) -> memoryview:
    """The uncompressed voxel bytes of the data ``region`` (inflated here, bounded by the declared size).

    Raises:
        TruncatedFileError: fewer voxel bytes than the header declares (cut data).
        DecodeError: a corrupt compressed stream.
    """
    from medimg_spark.io.nrrd import inflate

    need = header.nbytes
    view = memoryview(region)  # views, not copies, of a possibly large buffer
    if header.header_size == -1:
        body = view if header.compressed else view[-need:]
    else:
        body = view[header.header_size :]
    raw = memoryview(inflate("gzip", body, need, "MetaImage")) if header.compressed else body[:need]
    if len(raw) < need:
        raise TruncatedFileError(
            f"MetaImage data holds {len(raw)} of the {need} voxel bytes its header declares; the file is truncated"
        )
    return raw


def read_image(header: MetaHeader, region: bytes | memoryview) -> Any:
    """Decode with SimpleITK from a private temporary copy of the checked, uncompressed voxels.

    The data is inflated here (:func:`voxel_bytes`) rather than by SimpleITK, which fills cut
    compressed data with whatever it holds instead of failing.

    Raises:
        TruncatedFileError, DecodeError: cut or corrupt data; SimpleITK cannot read it.
    """
    sitk = _sitk()
    sitk.ProcessObject_SetGlobalWarningDisplay(False)  # ITK warnings quote header values to stderr
    raw = voxel_bytes(header, region)
    with tempfile.TemporaryDirectory(prefix="medimg-metaimage-") as tmp:
        path = os.path.join(tmp, "image.mhd")
        with open(path, "wb") as fh:
            fh.write(_plain_header(header))
        with open(os.path.join(tmp, "image.raw"), "wb") as fh:
            fh.write(raw)
        del raw
        reader = sitk.ImageFileReader()
        reader.SetImageIO("MetaImageIO")
        reader.SetFileName(path)
        reader.SetNumberOfThreads(1)
        try:
            return reader.Execute()
        except RuntimeError as err:
            messages = [m.strip() for m in str(err).splitlines() if m.strip() and tmp not in m]
            detail = messages[-1] if messages else "read error"
            raise DecodeError(
                f"SimpleITK cannot decode the MetaImage data ({detail}); re-export the file"
            ) from None


def frames(image: Any, header: MetaHeader, sha: str) -> Iterator[Frame]:
    """The frames ``GetArrayFromImage(image)[k]`` with their LPS geometry."""
    sitk = _sitk()
    arr = sitk.GetArrayViewFromImage(image)  # no copy: each frame is copied out below, ``image`` stays alive
    if image.GetDimension() == 2:
        arr = arr[np.newaxis, ...]
    expected = (header.n_slices, header.dims[1], header.dims[0])
    if arr.shape[:3] != expected:
        raise DecodeError(f"SimpleITK decoded shape {arr.shape}, the header declares (z, y, x) = {expected}")
    affine = index_to_lps(image)
    series = derived_uid("series", sha, 0)
    photometric = "MONOCHROME2" if header.channels == 1 else ("RGB" if header.channels == 3 else None)
    for k in range(arr.shape[0]):
        geo = slice_geometry(affine, k, row_axis=1, col_axis=0)
        meta: dict[str, Any] = {
            "photometric": photometric,
            "instance_number": k,
            "series_instance_uid": series,
            "image_position": geo.image_position,
            "image_orientation": geo.image_orientation,
            "pixel_spacing": geo.pixel_spacing,
        }
        yield Frame(k, np.ascontiguousarray(arr[k]), meta)


def header_json(header: MetaHeader) -> str:
    """The structural header fields as JSON text values (see :data:`_JSON_FIELDS`)."""
    return json.dumps({k: header.fields[k] for k in _JSON_FIELDS if k in header.fields}, sort_keys=True)


def parse_metaimage(data: bytes, ctx: FileContext) -> ParsedFile:
    """Parse MetaImage bytes (``.mha``, or a ``.mhd`` whose data file is read next to it).

    Raises:
        InvalidHeaderError, UnsupportedFormatError, NoPixelDataError, ImageTooLargeError,
        TruncatedFileError: from the header, before any voxel is decoded.
        DetachedDataError, FileTooLargeError: the detached data file cannot be read.
        SimpleITKMissingError: the ``itk`` extra is not installed.
    """
    header, offset = read_header(data)
    _sitk()
    found = data_region(
        data, offset, header.data_file, ctx.source_path, ctx.max_file_bytes, "MetaImage header"
    )
    region, sha, identity = found.region, found.sha, found.identity
    check_size(header, region, ctx.max_decoded_bytes)

    def decode() -> Iterator[Frame]:
        yield from frames(read_image(header, region), header, sha)

    study = derived_uid("study", sha)
    spacing = (
        [abs(v) for v in _floats(header.fields, "ElementSpacing")]
        if "ElementSpacing" in header.fields
        else []
    )
    modality = _MODALITIES.get(header.fields.get("Modality", "").strip(), ctx.default_modality)
    return ParsedFile(
        source_format="metaimage",
        modality=modality,
        has_pixels=True,
        n_frames=header.n_slices,
        image_meta={
            "rescale_slope": None,
            "rescale_intercept": None,
            "pixel_spacing": [spacing[1], spacing[0]] if len(spacing) >= 2 else None,
            "slice_thickness": spacing[2] if len(spacing) == 3 and len(header.dims) == 3 else None,
            "bits_stored": header.itemsize * 8,
            "study_instance_uid": study,
            "frame_of_reference_uid": derived_uid("frame_of_reference", sha),
        },
        instance_meta={
            "header_json": header_json(header),
            "study_instance_uid": study,
            "series_instance_uid": derived_uid("series", sha, 0),
        },
        decode=decode,
        content_sha256=identity,
    )
