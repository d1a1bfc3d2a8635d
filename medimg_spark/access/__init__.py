"""Access control over the lake, enforced by keys: policy, KMS, audit log, encrypted tables.

Importable without Spark (only :mod:`medimg_spark.access.spark` imports pyspark)::

    from medimg_spark.access import Kms, load_policy
    kms = Kms.init("/secure/kms", load_policy("conf/access-policy.yaml"))

    from medimg_spark.access.spark import protect_lake, read_table
    protect_lake(spark, "lake", kms)                       # encrypt the zone tables
    df = read_table(spark, "lake", "images", principal="alice", purpose="research", kms=kms)

See the README's "Access control" section.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

from medimg_spark.access.audit import AuditLog, VerifyResult
from medimg_spark.access.errors import (
    AccessDeniedError,
    AccessError,
    AuditError,
    KeyUnavailableError,
    KmsError,
    LakeProtectionError,
    PolicyError,
    UnknownColumnError,
)
from medimg_spark.access.kms import KMS_DIR_ENV, BundleKmsClient, Kms, ReleasedKeys
from medimg_spark.access.policy import AccessPolicy, Decision, load_policy, parse_policy

__all__ = [
    "KMS_DIR_ENV",
    "AccessDeniedError",
    "AccessError",
    "AccessPolicy",
    "AuditError",
    "AuditLog",
    "BundleKmsClient",
    "Decision",
    "KeyUnavailableError",
    "Kms",
    "KmsError",
    "LakeProtectionError",
    "PolicyError",
    "ReleasedKeys",
    "UnknownColumnError",
    "VerifyResult",
    "load_policy",
    "parse_policy",
    "shipped_policy_path",
]


def shipped_policy_path() -> Traversable:
    """The example policy shipped as package data (``medimg_spark/resources/access/policy.yaml``)."""
    return resources.files("medimg_spark.resources").joinpath("access", "policy.yaml")
