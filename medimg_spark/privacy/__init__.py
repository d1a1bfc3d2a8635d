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

from typing import TYPE_CHECKING

from medimg_spark._lazy import lazy_exports

# public name -> 'module:attribute', imported on first use (PEP 562): importing the package stays cheap
_EXPORTS = {
    "ALLOWED_KEYWORDS": "medimg_spark.privacy.allowlist:ALLOWED_KEYWORDS",
    "OPTION_CODES": "medimg_spark.privacy.config:OPTION_CODES",
    "DeidConfig": "medimg_spark.privacy.config:DeidConfig",
    "AuditEntry": "medimg_spark.privacy.engine:AuditEntry",
    "Deidentifier": "medimg_spark.privacy.engine:Deidentifier",
    "DeidResult": "medimg_spark.privacy.engine:DeidResult",
    "VaultEntry": "medimg_spark.privacy.engine:VaultEntry",
    "BurnedInAnnotationError": "medimg_spark.privacy.errors:BurnedInAnnotationError",
    "DeidConfigError": "medimg_spark.privacy.errors:DeidConfigError",
    "DeidError": "medimg_spark.privacy.errors:DeidError",
    "DeidFileError": "medimg_spark.privacy.errors:DeidFileError",
    "DeidKeyError": "medimg_spark.privacy.errors:DeidKeyError",
    "DeidProcessingError": "medimg_spark.privacy.errors:DeidProcessingError",
    "DuplicateInstanceError": "medimg_spark.privacy.errors:DuplicateInstanceError",
    "MissingIdentifierError": "medimg_spark.privacy.errors:MissingIdentifierError",
    "OcrFailedError": "medimg_spark.privacy.errors:OcrFailedError",
    "OcrUnavailableError": "medimg_spark.privacy.errors:OcrUnavailableError",
    "PseudonymNotFoundError": "medimg_spark.privacy.errors:PseudonymNotFoundError",
    "ResidualTextError": "medimg_spark.privacy.errors:ResidualTextError",
    "VaultError": "medimg_spark.privacy.errors:VaultError",
    "VaultKeyError": "medimg_spark.privacy.errors:VaultKeyError",
    "KEY_ENV": "medimg_spark.privacy.keys:KEY_ENV",
    "KEY_FILE_ENV": "medimg_spark.privacy.keys:KEY_FILE_ENV",
    "Pseudonymizer": "medimg_spark.privacy.keys:Pseudonymizer",
    "generate_key_file": "medimg_spark.privacy.keys:generate_key_file",
    "load_key": "medimg_spark.privacy.keys:load_key",
    "read_key_file": "medimg_spark.privacy.keys:read_key_file",
    "PixelRule": "medimg_spark.privacy.pixels:PixelRule",
    "load_pixel_rules": "medimg_spark.privacy.pixels:load_pixel_rules",
    "tesseract_available": "medimg_spark.privacy.pixels:tesseract_available",
    "Profile": "medimg_spark.privacy.profile:Profile",
    "ProfileEntry": "medimg_spark.privacy.profile:ProfileEntry",
    "load_profile": "medimg_spark.privacy.profile:load_profile",
    "resolve_action": "medimg_spark.privacy.profile:resolve_action",
    "deidentify_bytes": "medimg_spark.privacy.spark:deidentify_bytes",
    "run_deid": "medimg_spark.privacy.spark:run_deid",
    "VAULT_KEY_FILE_ENV": "medimg_spark.privacy.vault:VAULT_KEY_FILE_ENV",
    "KeyFileKmsClient": "medimg_spark.privacy.vault:KeyFileKmsClient",
    "read_vault": "medimg_spark.privacy.vault:read_vault",
    "reidentify": "medimg_spark.privacy.vault:reidentify",
    "write_vault_file": "medimg_spark.privacy.vault:write_vault_file",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
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
        OcrFailedError,
        OcrUnavailableError,
        PseudonymNotFoundError,
        ResidualTextError,
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
    "OcrFailedError",
    "OcrUnavailableError",
    "PixelRule",
    "Profile",
    "ProfileEntry",
    "PseudonymNotFoundError",
    "Pseudonymizer",
    "ResidualTextError",
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
