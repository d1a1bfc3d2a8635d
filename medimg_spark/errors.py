"""Exception classes of medimg-spark.

Every error names the bad input and says how to fix it. Ingest-time errors on a
single file never propagate: they become a quarantine row whose ``error_class`` is
the exception's class name.
"""

from __future__ import annotations


class MedimgError(Exception):
    """Base class of every error raised by medimg-spark."""


class ConfigError(MedimgError):
    """A YAML config or command-line argument is invalid (exit code 2)."""


class JavaMissingError(MedimgError):
    """No Java 17+ runtime was found for Spark."""


class IngestFileError(MedimgError):
    """Base class of per-file ingest failures (always quarantined, never raised to the job)."""


class EmptyFileError(IngestFileError):
    """The file has zero bytes."""


class FileTooLargeError(IngestFileError):
    """The file exceeds Spark's binaryFile limit (2 GiB) or the configured maximum."""


class TruncatedFileError(IngestFileError):
    """The file ends before its declared content does (an element's value or header is cut short)."""


class UnsupportedFormatError(IngestFileError):
    """The content matches none of the supported formats (DICOM, PNG, JPEG, TIFF, NIfTI, npz, NRRD,
    MetaImage), or a variant of one that is not supported."""


class MalformedFileError(IngestFileError):
    """The format's parser refused the content with an exception of its own (nibabel's ``HeaderDataError``,
    ``gzip.BadGzipFile``, ``zlib.error``, a ``UnicodeDecodeError``...), named in the message: the file is
    damaged, or not the format its magic bytes suggest."""


class NoPixelDataError(IngestFileError):
    """A file that must carry pixels (PNG, NIfTI, npz) holds none."""


class DecodeError(IngestFileError):
    """Pixel data is present but could not be decoded to an array of the declared shape."""


class RecipeError(MedimgError):
    """A processing recipe step failed or has invalid parameters."""


class InvalidHeaderError(IngestFileError):
    """A header value is malformed (a file-meta UID that is not a UID, a negative frame count...) or an element
    the pixel data needs (BitsAllocated, Rows...) is missing."""


class ImageTooLargeError(IngestFileError):
    """Decoding would exceed ``ingest.max_decoded_bytes``: refused before any pixel is decoded."""


class FileTimeoutError(IngestFileError):
    """Reading or decoding one file took longer than ``ingest.max_seconds_per_file``."""


class WorkerCrashError(IngestFileError):
    """The Python worker died (killed by the OS, or a crash in native code) while reading this file."""
