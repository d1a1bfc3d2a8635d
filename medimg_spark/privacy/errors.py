"""Exceptions of the de-identification layer.

Messages never quote values read from a DICOM file: they name the attribute, the file or the
setting at fault and how to fix it, so they can be stored in quarantine tables and logs.
"""

from __future__ import annotations

from medimg_spark.errors import ConfigError, IngestFileError, MedimgError


class DeidError(MedimgError):
    """Base class of every de-identification error."""


class DeidKeyError(DeidError, ConfigError):
    """No pseudonymisation key is configured, or the key (file) is unusable."""


class DeidConfigError(DeidError, ConfigError):
    """A :class:`~medimg_spark.privacy.config.DeidConfig` setting or a pixel-rule file is invalid."""


class DeidFileError(DeidError, IngestFileError):
    """Base class of per-file de-identification failures (quarantined with ``stage="deid"``)."""


class BurnedInAnnotationError(DeidFileError):
    """Pixels may carry burned-in text and no pixel rule covers the image."""


class ResidualTextError(DeidFileError):
    """OCR still reads text in the pixels after the burned-in text was blanked."""


class OcrFailedError(DeidFileError):
    """Tesseract failed, timed out or vanished while reading one image (the file is quarantined)."""


class MissingIdentifierError(DeidFileError):
    """The dataset lacks an attribute needed to place the output (e.g. SOP Instance UID)."""


class DuplicateInstanceError(DeidFileError):
    """Another input file with different content produced the same output instance."""


class DeidProcessingError(DeidFileError):
    """De-identifying a file failed; the underlying message is withheld (it may quote identifiers)."""


class OcrUnavailableError(DeidConfigError):
    """OCR was required (``ocr="on"``) but the ``tesseract`` binary is not installed."""


class VaultError(DeidError):
    """The re-identification vault cannot be written or read."""


class VaultKeyError(VaultError, ConfigError):
    """The vault master-key file is missing, unreadable, too permissive or wrong."""


class PseudonymNotFoundError(VaultError, KeyError):
    """The pseudonym is not recorded in the vault."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "pseudonym not found"
