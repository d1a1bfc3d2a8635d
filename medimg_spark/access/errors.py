"""Exceptions of access control.

Messages name the principal, the table, the column and the policy rule at fault and say how to
fix it; they never carry key material.
"""

from __future__ import annotations

from medimg_spark.errors import ConfigError, MedimgError


class AccessError(MedimgError):
    """Base class of every access-control error."""


class PolicyError(AccessError, ConfigError):
    """The access policy YAML is invalid, or names a zone, role, table or group that does not exist."""


class KmsError(AccessError, ConfigError):
    """The KMS directory is missing, not initialised, too permissive, or a key file is unusable."""


class AccessDeniedError(AccessError):
    """The policy does not allow this principal this table, column or purpose (audited)."""


class KeyUnavailableError(AccessDeniedError):
    """A file is encrypted under a key (or key version) that was not released to the reader."""


class AuditError(AccessError):
    """The audit log cannot be written, or its chain does not verify."""


class LakeProtectionError(AccessError):
    """Protecting (encrypting) a lake table failed; the table was left as it was."""


class UnknownColumnError(AccessError, ConfigError):
    """A requested column or table is not in the protected lake (checked before keys are released)."""
