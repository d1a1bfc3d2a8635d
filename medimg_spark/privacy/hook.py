"""De-identification at ingest: a picklable hook the ingest decoder calls on every DICOM dataset."""

from __future__ import annotations

import re
from typing import Any

from medimg_spark.privacy.engine import Deidentifier, VaultEntry
from medimg_spark.privacy.errors import DeidFileError, DeidProcessingError

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def withhold_values(message: str) -> str:
    """Remove quoted values from an error message (library messages quote header values)."""
    return _QUOTED.sub("'<withheld>'", message)


class IngestDeidentifier:
    """Callable ``dataset -> de-identified dataset`` for :func:`medimg_spark.io.ingest.ingest`.

    Vault entries (pseudonym → original identifiers) are kept in memory for the task and written
    by :meth:`flush` as one encrypted vault file per partition, only when ``vault_dir`` is set.

    Args:
        deidentifier: the configured profile engine with its key.
        vault_dir: separate, owner-only location of the re-identification vault (or None).
        vault_key_file: master-key file of the vault's encryption.
        run_id: the ingest run id, part of the vault file names.
    """

    def __init__(
        self,
        deidentifier: Deidentifier,
        vault_dir: str | None = None,
        vault_key_file: str | None = None,
        run_id: str = "",
    ) -> None:
        self.deidentifier = deidentifier
        self.vault_dir = vault_dir
        self.vault_key_file = vault_key_file
        self.run_id = run_id
        self._pending: list[VaultEntry] = []

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_pending"] = []
        return state

    def __call__(self, ds: Any) -> Any:
        try:
            result = self.deidentifier.deidentify(ds)
        except DeidFileError:
            raise
        except Exception as exc:
            raise DeidProcessingError(
                f"de-identification failed ({type(exc).__name__}); the original message is withheld "
                "because it may quote identifying values"
            ) from None
        if self.vault_dir:
            self._pending.extend(result.vault)
        return result.dataset

    def flush(self, partition: str) -> None:
        """Write the vault entries gathered so far (no-op without a vault)."""
        if not (self.vault_dir and self.vault_key_file and self._pending):
            return
        from medimg_spark.privacy.vault import write_vault_file

        write_vault_file(
            self.vault_dir, self._pending, self.vault_key_file, run_id=f"{self.run_id}-{partition}"
        )
        self._pending = []
