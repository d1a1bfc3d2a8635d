"""Pseudonymisation key handling and keyed pseudonyms (HMAC-SHA256).

The key never comes from a config file in the repository: it is read from the environment
variable ``MEDIMG_DEID_KEY`` (the key itself), from a key file (argument, or the path in
``MEDIMG_DEID_KEY_FILE``), or generated at random for demos (``ephemeral=True``; the random key is
returned to the caller and printed nowhere, so its pseudonyms cannot be reproduced later).

Key text is decoded as hexadecimal when it is an even-length hex string, else as base64 when
that decodes cleanly, else taken as UTF-8 bytes; at least 32 bytes are required.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from medimg_spark.privacy.errors import DeidKeyError

KEY_ENV = "MEDIMG_DEID_KEY"
KEY_FILE_ENV = "MEDIMG_DEID_KEY_FILE"
MIN_KEY_BYTES = 32


def decode_key_text(text: str, *, source: str) -> bytes:
    """Decode key text (hex, base64 or raw UTF-8) into bytes.

    Args:
        text: The key as stored.
        source: Where it came from, used in error messages (never the key itself).

    Raises:
        DeidKeyError: When the key is shorter than 32 bytes.
    """
    stripped = text.strip()
    key: bytes
    if len(stripped) % 2 == 0 and stripped and all(c in "0123456789abcdefABCDEF" for c in stripped):
        key = bytes.fromhex(stripped)
    else:
        try:
            key = base64.b64decode(stripped, validate=True)
        except (binascii.Error, ValueError):
            key = stripped.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise DeidKeyError(
            f"the de-identification key from {source} is {len(key)} bytes long; at least {MIN_KEY_BYTES} "
            "are required. Generate one with `python -c 'import secrets; print(secrets.token_hex(32))'`."
        )
    return key


def read_key_file(path: str | os.PathLike[str], *, what: str = "de-identification key") -> bytes:
    """Read a key file that only its owner may read (mode 0600 or stricter).

    Raises:
        DeidKeyError: When the file is missing, group/world accessible or holds a short key.
    """
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except OSError as exc:
        raise DeidKeyError(
            f"cannot read the {what} file {p}: {exc.strerror}; pass an existing file "
            "(create one with medimg_spark.privacy.generate_key_file)"
        ) from None
    if not stat.S_ISREG(mode):
        raise DeidKeyError(f"the {what} file {p} is not a regular file")
    if mode & 0o077:
        raise DeidKeyError(
            f"the {what} file {p} is readable by group or others (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {p}`"
        )
    return decode_key_text(p.read_text(encoding="utf-8"), source=f"file {p}")


def generate_key_file(path: str | os.PathLike[str], *, nbytes: int = 32) -> Path:
    """Create a new random key file (hex text, mode 0600); refuses to overwrite an existing file.

    Raises:
        DeidKeyError: When the file already exists.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise DeidKeyError(f"key file {p} already exists; remove it or choose another path") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secrets.token_hex(nbytes) + "\n")
    os.chmod(p, 0o600)
    return p


def load_key(key_file: str | os.PathLike[str] | None = None, *, ephemeral: bool = False) -> bytes:
    """Load the pseudonymisation key.

    Order: ``key_file`` argument, then ``$MEDIMG_DEID_KEY`` (the key itself), then the file named
    by ``$MEDIMG_DEID_KEY_FILE``. With ``ephemeral=True`` (demos) a fresh random key is returned
    instead; it is printed nowhere, so pseudonyms will differ on every run.

    Raises:
        DeidKeyError: When no key is configured, when ``ephemeral`` is combined with a key file,
            or when the key is unusable.
    """
    if ephemeral:
        if key_file is not None:
            raise DeidKeyError("pass either a key file or ephemeral=True, not both")
        return secrets.token_bytes(32)
    if key_file is not None:
        return read_key_file(key_file)
    env_key = os.environ.get(KEY_ENV)
    if env_key:
        return decode_key_text(env_key, source=f"${KEY_ENV}")
    env_file = os.environ.get(KEY_FILE_ENV)
    if env_file:
        return read_key_file(env_file)
    raise DeidKeyError(
        f"no de-identification key: set ${KEY_ENV} to a secret of at least {MIN_KEY_BYTES} bytes "
        f"(e.g. 64 hex characters), point ${KEY_FILE_ENV} or the key-file option at a 0600 key file, "
        "or use an ephemeral key for demos (pseudonyms are then not reproducible)"
    )


_UID_ROOT = "2.25."

#: File extensions a path pseudonym keeps (lower-cased): they name a format, never a person.
SAFE_SUFFIXES = (
    ".nii.gz",
    ".dcm",
    ".dicom",
    ".ima",
    ".nii",
    ".nrrd",
    ".nhdr",
    ".mha",
    ".mhd",
    ".raw",
    ".zraw",
    ".npz",
    ".npy",
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".bmp",
    ".gz",
)


def normalized_path(path: str) -> str:
    """``path`` as a plain local path when it is one or a ``file:`` URI (other URIs unchanged)."""
    if path.startswith("file://"):
        return path[len("file://") :]
    if path.startswith("file:"):
        return path[len("file:") :]
    return path


def safe_suffix(path: str) -> str:
    """The lower-case known extension of ``path`` (:data:`SAFE_SUFFIXES`), or ``""``."""
    name = path.rsplit("/", 1)[-1].lower()
    return next((s for s in SAFE_SUFFIXES if name.endswith(s) and len(name) > len(s)), "")


class Pseudonymizer:
    """Keyed, deterministic pseudonyms: UIDs, patient pseudonyms and per-patient date shifts.

    Every value is an HMAC-SHA256 of a domain label and the original under the key, so the same
    key gives the same pseudonyms in every run and on every executor, and a different key gives
    unrelated ones.
    """

    def __init__(self, key: bytes, *, max_date_shift_days: int = 3650) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise DeidKeyError(
                f"the de-identification key is {len(key)} bytes; at least {MIN_KEY_BYTES} needed"
            )
        self._key = bytes(key)
        self.max_date_shift_days = max_date_shift_days

    def digest(self, domain: str, value: str) -> bytes:
        """HMAC-SHA256 of ``domain`` and ``value``."""
        return hmac.new(self._key, domain.encode() + b"\x00" + value.encode("utf-8"), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """Replacement UID ``2.25.<int>``: the integer form of a version-8 UUID built from the HMAC."""
        raw = bytearray(self.digest("uid", original.strip().rstrip("\x00"))[:16])
        raw[6] = (raw[6] & 0x0F) | 0x80  # UUID version 8 (custom)
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
        return _UID_ROOT + str(int.from_bytes(raw, "big"))

    def patient_pseudonym(self, identity: str) -> str:
        """Patient pseudonym (``P`` + 20 hex digits) used as Patient ID and Patient's Name."""
        return "P" + self.digest("patient", identity)[:10].hex().upper()

    def short_token(self, domain: str, value: str, length: int = 12) -> str:
        """A short upper-case hex token (for AE titles and other length-limited replacements)."""
        return self.digest(domain, value).hex().upper()[:length]

    def path_pseudonym(self, path: str) -> str:
        """Pseudonym of a file path: ``deid-`` + 32 hex digits of the HMAC + a known lower-case extension.

        A local path and its ``file:`` URI give the same pseudonym (the HMAC is over the plain local
        path), so a rerun or an incremental run that names the file either way matches it.
        """
        return f"deid-{self.digest('path', normalized_path(path)).hex()[:32]}{safe_suffix(path)}"

    def date_shift(self, identity: str) -> _dt.timedelta:
        """Per-patient shift into the past by 1 to ``max_date_shift_days`` whole days."""
        n = int.from_bytes(self.digest("dateshift", identity)[:8], "big")
        return _dt.timedelta(days=-(1 + n % self.max_date_shift_days))

    def __repr__(self) -> str:  # never show the key
        return f"Pseudonymizer(max_date_shift_days={self.max_date_shift_days})"
