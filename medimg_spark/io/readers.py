"""The reader registry: one entry per supported file format, detected from content.

Each :class:`Reader` names the :mod:`~medimg_spark.io.detect` formats it parses, a label for
messages, an optional ``sniff`` for formats :func:`~medimg_spark.io.detect.detect_format` does not
know, and its parse function as ``"module:function"`` (imported on first use, so listing readers
imports no codec). A parse function has the signature ``(data, fmt, ctx) -> ParsedFile``.

Adding a format is one module that calls :func:`register_reader` (with a ``sniff``) plus its test;
list the module in :data:`READER_MODULES` so ingest imports it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medimg_spark.errors import UnsupportedFormatError
from medimg_spark.io import detect
from medimg_spark.registry import Registry, UnknownNameError

if TYPE_CHECKING:
    from medimg_spark.io.files import FileContext
    from medimg_spark.io.model import ParsedFile

ParseFn = Callable[[bytes, str, "FileContext"], "ParsedFile"]
SniffFn = Callable[[bytes], "str | None"]


@dataclass(frozen=True)
class Reader:
    """One file format (or family) and how to parse it.

    Attributes:
        name: registry name.
        formats: the format names it parses (as returned by ``detect_format`` or its ``sniff``).
        label: how messages name the format(s), e.g. ``"PNG, JPEG, TIFF"``.
        parse: ``"module:function"`` with signature ``(data, fmt, ctx) -> ParsedFile``.
        sniff: ``data -> format name or None``, tried when ``detect_format`` knows no format.
    """

    name: str
    formats: tuple[str, ...]
    label: str
    parse: str
    sniff: SniffFn | None = None

    def load(self) -> ParseFn:
        """The parse function (its module is imported now)."""
        module, _, attr = self.parse.partition(":")
        fn: ParseFn = getattr(importlib.import_module(module), attr)
        return fn


class UnknownReaderError(UnknownNameError):
    """No reader is registered under that name."""


READERS: Registry[Reader] = Registry(
    "reader",
    hint="add one with medimg_spark.io.readers.register_reader in a module listed in READER_MODULES",
    error=UnknownReaderError,
)

#: Modules registering further readers (imported by :func:`reader_for`); a new format's module goes here.
READER_MODULES: tuple[str, ...] = ()


def register_reader(reader: Reader) -> Reader:
    """Add ``reader`` to :data:`READERS` (its help text is its label)."""
    return READERS.register(reader.name, reader, help=reader.label, formats=reader.formats)


_loaded = False


def _load_modules() -> None:
    global _loaded
    if not _loaded:
        for module in READER_MODULES:
            importlib.import_module(module)
        _loaded = True


def supported_formats() -> str:
    """``"DICOM, PNG, JPEG, TIFF, NIfTI-1/2, MedMNIST npz, NRRD, MetaImage"``: the labels of every reader."""
    _load_modules()
    return ", ".join(READERS.get(n).label for n in READERS)


def reader_for(fmt: str | None, data: bytes = b"") -> tuple[str, Reader]:
    """The ``(format, reader)`` for a detected format; ``fmt`` None asks each reader's ``sniff``.

    Raises:
        UnsupportedFormatError: no reader parses this content; the message lists the supported formats.
    """
    _load_modules()
    readers = [READERS.get(n) for n in READERS]
    if fmt is None:
        for reader in readers:
            found = reader.sniff(data) if reader.sniff is not None else None
            if found is not None:
                return found, reader
    else:
        for reader in readers:
            if fmt in reader.formats:
                return fmt, reader
    raise UnsupportedFormatError(f"content matches no supported format ({supported_formats()})")


# --- the built-in readers: thin adapters so every parse function takes (data, fmt, ctx) ----------------


def parse_dicom_file(data: bytes, fmt: str, ctx: FileContext) -> ParsedFile:
    """DICOM Part 10 or a bare data set (de-identified by ``ctx.deidentify``)."""
    from medimg_spark.io.dicom import parse_dicom

    return parse_dicom(data, ctx.deidentify, ctx.max_decoded_bytes)


def parse_raster_file(data: bytes, fmt: str, ctx: FileContext) -> ParsedFile:
    """PNG, JPEG or TIFF."""
    from medimg_spark.io.raster import parse_raster

    return parse_raster(data, fmt, ctx.default_modality, ctx.max_decoded_bytes)


def parse_nifti_file(data: bytes, fmt: str, ctx: FileContext) -> ParsedFile:
    """NIfTI-1 or NIfTI-2 (single file)."""
    from medimg_spark.io.nifti import parse_nifti

    return parse_nifti(data, fmt, ctx.default_modality, ctx.max_decoded_bytes)


def parse_npz_file(data: bytes, fmt: str, ctx: FileContext) -> ParsedFile:
    """A MedMNIST-style ``.npz`` archive of ``.npy`` arrays."""
    from medimg_spark.io.npz import parse_npz

    return parse_npz(data, ctx.default_modality, ctx.max_decompressed_bytes, ctx.max_decoded_bytes)


def parse_nrrd_file(data: bytes, fmt: str, ctx: FileContext) -> ParsedFile:
    """NRRD: ``.nrrd`` (attached data) or ``.nhdr`` (data file next to it, read via ``ctx.source_path``)."""
    from medimg_spark.io.nrrd import parse_nrrd

    return parse_nrrd(data, ctx)


def parse_metaimage_file(data: bytes, fmt: str, ctx: FileContext) -> ParsedFile:
    """MetaImage: ``.mha`` or ``.mhd`` + ``ElementDataFile``, decoded by SimpleITK (the ``itk`` extra)."""
    from medimg_spark.io.metaimage import parse_metaimage

    return parse_metaimage(data, ctx)


_HERE = __name__
register_reader(Reader("dicom", (detect.DICOM,), "DICOM", f"{_HERE}:parse_dicom_file"))
register_reader(
    Reader("raster", (detect.PNG, detect.JPEG, detect.TIFF), "PNG, JPEG, TIFF", f"{_HERE}:parse_raster_file")
)
register_reader(Reader("nifti", (detect.NIFTI1, detect.NIFTI2), "NIfTI-1/2", f"{_HERE}:parse_nifti_file"))
register_reader(Reader("npz", (detect.NPZ,), "MedMNIST npz", f"{_HERE}:parse_npz_file"))
register_reader(Reader("nrrd", (detect.NRRD,), "NRRD", f"{_HERE}:parse_nrrd_file"))
register_reader(Reader("metaimage", (detect.METAIMAGE,), "MetaImage", f"{_HERE}:parse_metaimage_file"))
