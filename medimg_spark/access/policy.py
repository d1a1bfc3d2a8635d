"""The access policy: zones, protected column groups, roles (RBAC + ABAC) and principals.

A policy is a YAML file validated into :class:`AccessPolicy` (pydantic, ``extra="forbid"``)::

    version: 1
    zones:                      # zone -> the lake tables it holds
      identified:   {lake: identified,   tables: [images, instances, quarantine]}
      deidentified: {lake: deidentified, tables: [images, instances, quarantine]}
      derived:      {tables: [processed, features, predictions]}
    column_groups:              # table -> group -> columns, each group under its own key
      images: {patient: [patient_id, study_instance_uid, series_instance_uid, sop_instance_uid, source_path]}
    roles:
      researcher:
        zones: [deidentified, derived]
        purposes: [research]
        attributes: {project: [pneumonia]}     # ABAC on principal attributes
        rows: {values: {modality: [CR, OT]}}   # row conditions, applied by the reader
      steward:
        zones: [identified, deidentified, derived]
        column_groups: [images.patient]
        purposes: [quality, treatment]
        reidentify: true
    principals:
      alice: {roles: [researcher], attributes: {project: pneumonia}}

:func:`AccessPolicy.decide` is the one decision function used by the KMS (key release), the
reader and ``medimg access check``. Nothing here imports Spark.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medimg_spark.access.errors import PolicyError
from medimg_spark.config import format_validation_errors

__all__ = [
    "AccessPolicy",
    "Decision",
    "Denial",
    "LakeStatus",
    "Principal",
    "Role",
    "RowConditions",
    "Zone",
    "group_key_name",
    "load_policy",
    "parse_policy",
    "zone_key_name",
]

LakeStatus = Literal["identified", "deidentified"]


def zone_key_name(zone: str) -> str:
    """The KMS key name of a zone (its tables' footers and unprotected columns)."""
    return f"zone.{zone}"


def group_key_name(table: str, group: str) -> str:
    """The KMS key name of one protected column group."""
    return f"group.{table}.{group}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Zone(_Model):
    """A zone: tables that share one key (the Parquet footer key of their files).

    Attributes:
        tables: lake tables (folder names under the lake) in this zone.
        lake: which lakes the zone applies to: ``identified`` (ingested with ``--keep-phi``),
            ``deidentified`` or ``any``.
        description: free text.
    """

    tables: list[str] = Field(min_length=1)
    lake: Literal["any", "identified", "deidentified"] = "any"
    description: str = ""


class RowConditions(_Model):
    """Row conditions of a role, applied by the reader (not by keys).

    Attributes:
        values: column -> allowed values (e.g. ``modality: [CR, OT]``); rows with another value
            or null are dropped.
        flags: boolean columns that must be true (e.g. a ``consent`` column); null counts as false.
        tables: the tables the conditions apply to (default: every table the role reads; a table
            lacking a condition's column is then denied, never read unfiltered).
    """

    values: dict[str, list[str]] = Field(default_factory=dict)
    flags: list[str] = Field(default_factory=list)
    tables: list[str] | None = None

    def for_table(self, table: str) -> RowConditions:
        """The conditions that apply to ``table`` (none when ``tables`` leaves it out)."""
        if self.tables is not None and table not in self.tables:
            return RowConditions()
        return self

    @property
    def columns(self) -> list[str]:
        """Every column the conditions read."""
        return [*self.values, *self.flags]

    @property
    def empty(self) -> bool:
        """No condition at all."""
        return not self.values and not self.flags


class Role(_Model):
    """A role: zones, tables and columns it may read, and the conditions it holds under.

    Attributes:
        zones: zones whose key the role may obtain.
        tables: only these tables of those zones (default: every table of the zones).
        column_groups: protected groups (``table.group``) the role may read; other protected
            columns are denied.
        deny_columns: further denied columns (``table.column``), not in any group.
        purposes: purposes of use the role may read for (the request's ``purpose`` must be one).
        attributes: principal attribute -> allowed values (ABAC, e.g. ``project: [pneumonia]``).
        rows: row conditions applied by the reader.
        reidentify: whether the role may run ``medimg reidentify``.
        description: free text.
    """

    zones: list[str] = Field(min_length=1)
    tables: list[str] | None = None
    column_groups: list[str] = Field(default_factory=list)
    deny_columns: list[str] = Field(default_factory=list)
    purposes: list[str] = Field(min_length=1)
    attributes: dict[str, list[str]] = Field(default_factory=dict)
    rows: RowConditions = Field(default_factory=RowConditions)
    reidentify: bool = False
    description: str = ""


class Principal(_Model):
    """A user or service account: its roles and its attributes (for ABAC)."""

    roles: list[str] = Field(default_factory=list)
    attributes: dict[str, str] = Field(default_factory=dict)


@dataclass(frozen=True)
class Denial:
    """Why a request (or one column of it) is denied.

    Attributes:
        rule: the policy key that decided it (``roles.researcher.column_groups``).
        reason: one sentence naming the principal, table/column and the fix.
        column: the column denied, when the denial is about one column.
    """

    rule: str
    reason: str
    column: str | None = None


@dataclass(frozen=True)
class Decision:
    """The outcome of :meth:`AccessPolicy.decide`.

    Attributes:
        principal: who asked.
        table: the table asked for.
        zone: the table's zone (None when it is in no zone: always denied).
        purpose: the purpose of use given.
        allowed: whether the read may proceed.
        role: the role that allows it.
        columns: the columns that will be read (requested, or every column the role may read).
        denied: the reasons of every role that did not allow it (and the columns left out).
        rows: the row conditions the reader applies.
        key_names: the KMS keys (names, not versions) the read needs.
    """

    principal: str
    table: str
    zone: str | None
    purpose: str
    allowed: bool
    role: str | None = None
    columns: tuple[str, ...] = ()
    denied: tuple[Denial, ...] = ()
    rows: RowConditions = field(default_factory=RowConditions)
    key_names: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        """One message: what was allowed, or why not (first the most specific reason)."""
        if self.allowed:
            return (
                f"principal {self.principal!r} may read {len(self.columns)} column(s) of table "
                f"{self.table!r} (zone {self.zone}) for purpose {self.purpose!r} as role {self.role!r}"
            )
        reasons = sorted(self.denied, key=lambda d: d.column is None)
        return "access denied: " + "; ".join(f"{d.reason} [{d.rule}]" for d in reasons)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary (for ``medimg access check --json`` and the audit log)."""
        return {
            "principal": self.principal,
            "table": self.table,
            "zone": self.zone,
            "purpose": self.purpose,
            "allowed": self.allowed,
            "role": self.role,
            "columns": list(self.columns),
            "rows": self.rows.model_dump(),
            "key_names": list(self.key_names),
            "denied": [{"rule": d.rule, "column": d.column, "reason": d.reason} for d in self.denied],
        }


class AccessPolicy(_Model):
    """A validated access policy (see the module docstring for the YAML)."""

    version: Literal[1] = 1
    zones: dict[str, Zone] = Field(min_length=1)
    column_groups: dict[str, dict[str, list[str]]] = Field(default_factory=dict)
    roles: dict[str, Role] = Field(default_factory=dict)
    principals: dict[str, Principal] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references(self) -> AccessPolicy:
        problems: list[str] = []
        for name, role in self.roles.items():
            for z in role.zones:
                if z not in self.zones:
                    problems.append(
                        f"roles.{name}.zones: unknown zone {z!r}; choose from {', '.join(self.zones)}"
                    )
            zone_tables = {t for z in role.zones if z in self.zones for t in self.zones[z].tables}
            for t in role.tables or ():
                if t not in zone_tables:
                    problems.append(
                        f"roles.{name}.tables: table {t!r} is in none of the role's zones "
                        f"({', '.join(role.zones)}); add it to a zone's tables or remove it"
                    )
            for g in role.column_groups:
                table, _, group = g.partition(".")
                if group not in self.column_groups.get(table, {}):
                    problems.append(
                        f"roles.{name}.column_groups: {g!r} is not a column group; write table.group "
                        f"with a group under column_groups (e.g. images.patient)"
                    )
            for c in role.deny_columns:
                if "." not in c:
                    problems.append(f"roles.{name}.deny_columns: write {c!r} as table.column")
        for pname, principal in self.principals.items():
            for r in principal.roles:
                if r not in self.roles:
                    problems.append(
                        f"principals.{pname}.roles: unknown role {r!r}; choose from {', '.join(self.roles)}"
                    )
        for table, groups in self.column_groups.items():
            seen: dict[str, str] = {}
            for group, cols in groups.items():
                if not cols:
                    problems.append(f"column_groups.{table}.{group}: list at least one column")
                for c in cols:
                    if c in seen:
                        problems.append(
                            f"column_groups.{table}: column {c!r} is in groups {seen[c]!r} and {group!r}; "
                            "a column has one key: keep it in one group"
                        )
                    seen[c] = group
        for status in ("identified", "deidentified"):
            owner: dict[str, str] = {}
            for zname, zone in self.zones.items():
                if zone.lake not in ("any", status):
                    continue
                for t in zone.tables:
                    if t in owner:
                        problems.append(
                            f"zones.{zname}.tables: table {t!r} is also in zone {owner[t]!r} for "
                            f"{status} lakes; a table has one zone key: give one zone lake: "
                            "identified/deidentified or remove the table from one"
                        )
                    owner[t] = zname
        if problems:
            raise ValueError("; ".join(dict.fromkeys(problems)))
        return self

    # ------------------------------------------------------------------ queries

    def zone_of(self, table: str, lake: LakeStatus) -> str | None:
        """The zone holding ``table`` in a lake of status ``lake`` (None: in no zone)."""
        for name, zone in self.zones.items():
            if table in zone.tables and zone.lake in ("any", lake):
                return name
        return None

    def groups_of(self, table: str) -> dict[str, list[str]]:
        """The protected column groups of ``table``."""
        return dict(self.column_groups.get(table, {}))

    def group_of_column(self, table: str, column: str) -> str | None:
        """The protected group holding ``column`` of ``table``, if any."""
        for group, cols in self.column_groups.get(table, {}).items():
            if column in cols:
                return group
        return None

    def roles_of(self, principal: str) -> list[str]:
        """The roles of ``principal`` (empty when unknown)."""
        p = self.principals.get(principal)
        return list(p.roles) if p else []

    def key_names_of(self, principal: str) -> set[str]:
        """Every KMS key name the principal could obtain through any of its roles (for rotation)."""
        names: set[str] = set()
        for rname in self.roles_of(principal):
            role = self.roles[rname]
            names.update(zone_key_name(z) for z in role.zones)
            for g in role.column_groups:
                table, _, group = g.partition(".")
                names.add(group_key_name(table, group))
        return names

    def all_key_names(self) -> set[str]:
        """Every zone and group key name of the policy."""
        names = {zone_key_name(z) for z in self.zones}
        names.update(group_key_name(t, g) for t, groups in self.column_groups.items() for g in groups)
        return names

    def digest(self) -> str:
        """SHA-256 of the policy's canonical JSON (recorded in the audit log on every change)."""
        canon = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()

    # ------------------------------------------------------------------ the decision

    def _role_denials(
        self,
        rname: str,
        principal: Principal,
        pname: str,
        table: str,
        zone: str,
        purpose: str,
        columns: list[str],
    ) -> list[Denial]:
        role = self.roles[rname]
        rule = f"roles.{rname}"
        if zone not in role.zones:
            return [
                Denial(
                    f"{rule}.zones",
                    f"role {rname!r} of principal {pname!r} has no access to zone {zone!r} "
                    f"(table {table!r}); grant a role whose zones include {zone!r}",
                )
            ]
        if role.tables is not None and table not in role.tables:
            return [
                Denial(
                    f"{rule}.tables",
                    f"role {rname!r} of principal {pname!r} may read only tables {role.tables}, not {table!r}",
                )
            ]
        if purpose not in role.purposes:
            return [
                Denial(
                    f"{rule}.purposes",
                    f"role {rname!r} of principal {pname!r} may read for purposes {role.purposes}, not "
                    f"{purpose!r}; pass one of them as the purpose of use",
                )
            ]
        out: list[Denial] = []
        for attr, allowed in role.attributes.items():
            have = principal.attributes.get(attr)
            if have not in allowed:
                out.append(
                    Denial(
                        f"{rule}.attributes.{attr}",
                        f"role {rname!r} requires principal attribute {attr} in {allowed}; principal "
                        f"{pname!r} has {attr}={have!r}",
                    )
                )
        if out:
            return out
        for c in columns:
            group = self.group_of_column(table, c)
            if group is not None and f"{table}.{group}" not in role.column_groups:
                out.append(
                    Denial(
                        f"{rule}.column_groups",
                        f"principal {pname!r} may not read column {c!r} of table {table!r}: it is in the "
                        f"protected group {table}.{group}, which role {rname!r} does not grant",
                        column=c,
                    )
                )
            elif f"{table}.{c}" in role.deny_columns:
                out.append(
                    Denial(
                        f"{rule}.deny_columns",
                        f"principal {pname!r} may not read column {c!r} of table {table!r}: role "
                        f"{rname!r} denies {table}.{c}",
                        column=c,
                    )
                )
        return out

    def decide(
        self,
        principal: str,
        table: str,
        columns: list[str] | None,
        purpose: str,
        *,
        lake: LakeStatus = "deidentified",
        table_columns: list[str] | None = None,
    ) -> Decision:
        """Decide whether ``principal`` may read ``columns`` of ``table`` for ``purpose``.

        Roles are tried in the principal's order; the first that allows every requested column
        (all its readable columns when ``columns`` is None) decides, with its row conditions.

        Args:
            principal: the principal's name.
            table: the lake table (folder name).
            columns: the columns asked for; None: every column the role may read.
            purpose: the purpose of use.
            lake: the lake's status (``identified`` when ingested with ``--keep-phi``).
            table_columns: the table's columns (needed when ``columns`` is None, and to check
                that row conditions can be enforced).

        Returns:
            The decision; a denial carries one reason per role (and per denied column).
        """
        zone = self.zone_of(table, lake)

        def made(allowed: bool, **kw: Any) -> Decision:
            return Decision(principal, table, zone, purpose, allowed, **kw)

        p = self.principals.get(principal)
        if p is None or not p.roles:
            return made(
                False,
                denied=(
                    Denial(
                        "principals",
                        f"principal {principal!r} has no role in the policy; grant one with "
                        f"'medimg access grant --principal {principal} --role ROLE'",
                    ),
                ),
            )
        if zone is None:
            return made(
                False,
                denied=(
                    Denial(
                        "zones",
                        f"table {table!r} is in no zone of the policy for a {lake} lake, so no key opens "
                        "it; add it to a zone's tables",
                    ),
                ),
            )
        denials: list[Denial] = []
        for rname in p.roles:
            role = self.roles[rname]
            wanted = list(columns) if columns is not None else list(table_columns or ())
            found = self._role_denials(rname, p, principal, table, zone, purpose, wanted)
            if columns is None and found and all(d.column for d in found):
                # "every column I may read": leave the protected ones out instead of failing
                dropped = {d.column for d in found}
                wanted = [c for c in wanted if c not in dropped]
                found = []
            rows = role.rows.for_table(table)
            if not found and table_columns is not None:
                for c in rows.columns:
                    if c not in table_columns:
                        found.append(
                            Denial(
                                f"roles.{rname}.rows",
                                f"role {rname!r} restricts rows by column {c!r}, which table {table!r} "
                                "lacks, so the condition cannot be enforced (denied); remove the "
                                "condition or the table from the role",
                            )
                        )
            if found:
                denials.extend(found)
                continue
            keys = [zone_key_name(zone)]
            for group, cols in self.groups_of(table).items():
                if set(cols) & set(wanted):
                    keys.append(group_key_name(table, group))
            return made(
                True,
                role=rname,
                columns=tuple(wanted),
                rows=rows,
                key_names=tuple(keys),
            )
        return made(False, denied=tuple(denials))

    def may_reidentify(self, principal: str) -> str | None:
        """The role that lets ``principal`` run ``medimg reidentify`` (None: not allowed)."""
        return next((r for r in self.roles_of(principal) if self.roles[r].reidentify), None)

    # ------------------------------------------------------------------ edits (grant / revoke)

    def with_grant(self, principal: str, role: str, attributes: dict[str, str] | None = None) -> AccessPolicy:
        """A copy where ``principal`` has ``role`` (and these attributes set).

        Raises:
            PolicyError: the role is not in the policy.
        """
        if role not in self.roles:
            raise PolicyError(f"unknown role {role!r}; choose from {', '.join(self.roles)}")
        old = self.principals.get(principal, Principal())
        roles = old.roles if role in old.roles else [*old.roles, role]
        new = Principal(roles=roles, attributes={**old.attributes, **(attributes or {})})
        return self.model_copy(update={"principals": {**self.principals, principal: new}})

    def with_revoke(self, principal: str, role: str | None = None) -> AccessPolicy:
        """A copy where ``principal`` lost ``role`` (every role when None).

        Raises:
            PolicyError: the principal does not have that role.
        """
        old = self.principals.get(principal)
        if old is None or not old.roles:
            raise PolicyError(f"principal {principal!r} has no role to revoke; see 'medimg access check'")
        if role is not None and role not in old.roles:
            raise PolicyError(f"principal {principal!r} does not have role {role!r} (it has {old.roles})")
        roles = [] if role is None else [r for r in old.roles if r != role]
        new = Principal(roles=roles, attributes=old.attributes)
        return self.model_copy(update={"principals": {**self.principals, principal: new}})

    def to_yaml(self) -> str:
        """The policy as YAML (the KMS keeps the active policy in this form)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def parse_policy(data: Any, source: str = "<policy>") -> AccessPolicy:
    """Validate a policy mapping.

    Raises:
        PolicyError: naming every bad key and how to fix it.
    """
    if not isinstance(data, dict):
        raise PolicyError(
            f"{source}: the access policy must be a mapping with zones, column_groups, roles, principals"
        )
    try:
        return AccessPolicy.model_validate(data)
    except ValidationError as err:
        raise PolicyError(format_validation_errors(err, source, "access policy")) from None


def load_policy(path: str | os.PathLike[str]) -> AccessPolicy:
    """Read and validate a policy YAML file.

    Raises:
        PolicyError: the file is missing, not YAML, or invalid.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise PolicyError(
            f"cannot read the access policy {p}: {exc.strerror}; check the --policy path"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{p}: not valid YAML ({exc}); fix the file") from None
    return parse_policy(data, str(p))
