"""De-identification at ingest: a picklable hook the ingest decoder calls on every DICOM dataset."""

from __future__ import annotations

import re
from typing import Any

from medimg_spark.privacy.engine import Deidentifier, VaultEntry
from medimg_spark.privacy.errors import DeidFileError, DeidProcessingError
from medimg_spark.privacy.paths import phi_components, scrub_path

#: Vault kind and attribute of a path pseudonym's entry (``medimg reidentify --pseudonym deid-…``).
PATH_KIND = "path"
PATH_ATTRIBUTE = "source_path"

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def withhold_values(message: str) -> str:
    """Remove quoted values from an error message (library messages quote header values)."""
    return _QUOTED.sub("'<withheld>'", message)


class IngestDeidentifier:
    """Callable ``dataset -> de-identified dataset`` for :func:`medimg_spark.io.ingest.ingest`.

    Vault entries (pseudonym → original identifiers) are kept in memory for the task and written
    by :meth:`flush` as one encrypted vault file per partition, only when ``vault_dir`` is set.

    Paths: :meth:`begin_file` is called by the per-file code before each file; it returns the path's
    keyed pseudonym (the ``source_path`` of every row of that file, the original going to the vault as
    kind ``path``), and the dataset of that file, when DICOM, is checked for path components equal to
    its header PHI values (:attr:`path_phi`, a count only).

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
        self._path: str | None = None
        self._path_entry: int | None = None
        #: Path components of the current file equal to a header PHI value (set when its dataset is seen).
        self.path_phi: int | None = None
        #: Those components themselves (never written anywhere: used to drop a label taken from one).
        self.path_phi_parts: frozenset[str] = frozenset()

    def path_pseudonym(self, path: str) -> str:
        """The keyed pseudonym of ``path`` (deterministic under the key; nothing recorded)."""
        return self.deidentifier.pseudonymizer.path_pseudonym(path)

    def pseudonymize_path(self, path: str) -> str:
        """The pseudonym of ``path``, its original recorded for the vault (when there is one)."""
        pseudonym = self.path_pseudonym(path)
        if self.vault_dir:
            self._pending.append(VaultEntry(pseudonym, PATH_KIND, PATH_ATTRIBUTE, path, ""))
        return pseudonym

    def begin_file(self, path: str) -> str:
        """Start a file: return its path pseudonym (recorded for the vault) and reset :attr:`path_phi`."""
        self._path = path
        self.path_phi = None
        self.path_phi_parts = frozenset()
        pseudonym = self.pseudonymize_path(path)
        self._path_entry = len(self._pending) - 1 if self.vault_dir else None
        return pseudonym

    def scrub(self, message: str, path: str) -> str:
        """An error message of ``path``'s file without the path or quoted values."""
        return withhold_values(scrub_path(message, path, self.path_pseudonym(path)))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_pending"] = []
        state["_path"] = state["_path_entry"] = state["path_phi"] = None
        state["path_phi_parts"] = frozenset()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        fresh: dict[str, Any] = {
            "_path": None,
            "_path_entry": None,
            "path_phi": None,
            "path_phi_parts": frozenset(),
        }
        self.__dict__.update({**fresh, **state})

    def __call__(self, ds: Any) -> Any:
        if self._path is not None:
            try:
                self.path_phi_parts = frozenset(phi_components(self._path, ds))
            except Exception:  # a damaged header: nothing could be compared
                self.path_phi_parts = frozenset()
            self.path_phi = len(self.path_phi_parts)
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
            i = self._path_entry
            if i is not None and i < len(self._pending) and self._pending[i].kind == PATH_KIND:
                # the path entry names the patient whose file it is
                self._pending[i] = self._pending[i]._replace(patient_pseudonym=result.patient_pseudonym)
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
        self._path_entry = None
