"""DICOM de-identification: PS3.15 Annex E profile engine, pseudonyms, pixel cleaning, vault.

Typical use::

    from medimg_spark.privacy import DeidConfig, Deidentifier, load_key, run_deid

    key = load_key()                      # $MEDIMG_DEID_KEY or a 0600 key file
    deid = Deidentifier(DeidConfig(retain_longitudinal_modified_dates=True), key)
    result = deid.deidentify(dataset)     # result.dataset, result.actions, result.vault

    summary = run_deid(spark, ["/data/dicom"], "/out", DeidConfig(), key,
                       vault_dir="/secure/vault", vault_key_file="/secure/vault.key")
"""

from __future__ import annotations

from medimg_spark.privacy.allowlist import ALLOWED_KEYWORDS
from medimg_spark.privacy.config import OPTION_CODES, DeidConfig
from medimg_spark.privacy.engine import AuditEntry, Deidentifier, DeidResult, VaultEntry
from medimg_spark.privacy.errors import (
    BurnedInAnnotationError,
    DeidConfigError,
    DeidError,
    DeidFileError,
    DeidKeyError,
    DeidProcessingError,
    DuplicateInstanceError,
    MissingIdentifierError,
    OcrUnavailableError,
    PseudonymNotFoundError,
    VaultError,
    VaultKeyError,
)
from medimg_spark.privacy.keys import (
    KEY_ENV,
    KEY_FILE_ENV,
    Pseudonymizer,
    generate_key_file,
    load_key,
    read_key_file,
)
from medimg_spark.privacy.pixels import PixelRule, load_pixel_rules, tesseract_available
from medimg_spark.privacy.profile import Profile, ProfileEntry, load_profile, resolve_action
from medimg_spark.privacy.spark import deidentify_bytes, run_deid
from medimg_spark.privacy.vault import (
    VAULT_KEY_FILE_ENV,
    KeyFileKmsClient,
    read_vault,
    reidentify,
    write_vault_file,
)

__all__ = [
    "ALLOWED_KEYWORDS",
    "KEY_ENV",
    "KEY_FILE_ENV",
    "OPTION_CODES",
    "VAULT_KEY_FILE_ENV",
    "AuditEntry",
    "BurnedInAnnotationError",
    "DeidConfig",
    "DeidConfigError",
    "DeidError",
    "DeidFileError",
    "DeidKeyError",
    "DeidProcessingError",
    "DeidResult",
    "Deidentifier",
    "DuplicateInstanceError",
    "KeyFileKmsClient",
    "MissingIdentifierError",
    "OcrUnavailableError",
    "PixelRule",
    "Profile",
    "ProfileEntry",
    "PseudonymNotFoundError",
    "Pseudonymizer",
    "VaultEntry",
    "VaultError",
    "VaultKeyError",
    "deidentify_bytes",
    "generate_key_file",
    "load_key",
    "load_pixel_rules",
    "load_profile",
    "read_key_file",
    "read_vault",
    "reidentify",
    "resolve_action",
    "run_deid",
    "tesseract_available",
    "write_vault_file",
]
