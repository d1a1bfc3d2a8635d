"""``medimg access init|protect|grant|revoke|rotate|policy|check|audit|read``: the command line of access control.

Every argument and file (policy, KMS directory, lake) is checked before Spark starts; a bad one
exits 2 naming the flag and the fix. ``check`` exits 1 when the policy denies the request,
``audit --verify`` exits 1 when the chain is broken, ``read`` exits 1 when access is denied.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from medimg_spark.access.errors import KmsError
from medimg_spark.access.kms import KMS_DIR_ENV, Kms, resolve_kms_dir
from medimg_spark.errors import ConfigError

__all__ = ["add_args", "run"]

EXIT_OK = 0
EXIT_DENIED = 1


def _kms_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kms", help=f"KMS directory (0700); else ${KMS_DIR_ENV}")


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def add_args(p: argparse.ArgumentParser) -> None:
    """The ``access`` actions as sub-commands (parsers of the same class: usage errors exit 2)."""
    sub = p.add_subparsers(dest="access_command", required=True, metavar="ACTION", parser_class=type(p))
    a = sub.add_parser("init", help="create a KMS directory: the policy, keys per zone and column group")
    _kms_arg(a)
    a.add_argument("--policy", required=True, help="policy YAML (example: conf/access-policy.yaml)")
    a = sub.add_parser("protect", help="encrypt a lake's zone tables with their keys (Spark job, idempotent)")
    _kms_arg(a)
    a.add_argument("--out", required=True, help="the lake directory (local)")
    a.add_argument("--table", action="append", default=[], help="only this table (repeatable)")
    a.add_argument("--rekey", action="store_true", help="re-encrypt files under older key versions too")
    a.add_argument("--master", help="Spark master URL (default local[*])")
    _json_arg(a)
    a = sub.add_parser("grant", help="give a principal a role (and attributes); audited")
    _kms_arg(a)
    a.add_argument("--principal", required=True)
    a.add_argument("--role", required=True)
    a.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE", help="principal attribute")
    a = sub.add_parser("revoke", help="remove a principal's role(s) and rotate the keys it could obtain")
    _kms_arg(a)
    a.add_argument("--principal", required=True)
    a.add_argument("--role", help="only this role (default: every role)")
    a = sub.add_parser("check", help="what the policy decides for a read (no key released)")
    _kms_arg(a)
    _request_args(a)
    a.add_argument("--out", help="the lake (its manifest gives the table's columns and status)")
    _json_arg(a)
    a = sub.add_parser("rotate", help="add a new version of keys (scheduled rotation); audited")
    _kms_arg(a)
    a.add_argument(
        "--key", action="append", default=[], help="key name, e.g. zone.deidentified (default: all)"
    )
    a = sub.add_parser("policy", help="print the active policy, or replace it (--set FILE; audited)")
    _kms_arg(a)
    a.add_argument("--set", dest="new_policy", metavar="FILE", help="validated policy YAML to make active")
    a = sub.add_parser("audit", help="print the audit log; --verify checks the hash chain")
    _kms_arg(a)
    a.add_argument("--verify", action="store_true", help="verify the chain; exit 1 when broken")
    a.add_argument("--tail", type=int, default=20, metavar="N", help="print the last N entries (0: none)")
    _json_arg(a)
    a = sub.add_parser("read", help="read a protected table as a principal (show rows or count)")
    _kms_arg(a)
    _request_args(a)
    a.add_argument("--out", required=True, help="the lake directory")
    a.add_argument("--limit", type=int, default=5, help="rows to show")
    a.add_argument("--master", help="Spark master URL (default local[*])")


def _request_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--principal", required=True, help="who reads")
    p.add_argument("--table", required=True, help="lake table, e.g. images")
    p.add_argument("--purpose", required=True, help="purpose of use, e.g. research")
    p.add_argument("--columns", help="comma-separated columns (default: every column allowed)")


def _kms(args: argparse.Namespace) -> Kms:
    try:
        return Kms(resolve_kms_dir(args.kms))
    except KmsError as err:
        raise ConfigError(f"--kms: {err}") from None


def _columns(args: argparse.Namespace) -> list[str] | None:
    if not args.columns:
        return None
    cols = [c.strip() for c in args.columns.split(",") if c.strip()]
    if not cols:
        raise ConfigError("--columns: give comma-separated column names, e.g. --columns image_id,label")
    return cols


def _lake(path: str) -> Path:
    from medimg_spark.io.ingest import LAKE_MARKER

    lake = Path(path)
    if not (lake / LAKE_MARKER).is_file():
        raise ConfigError(
            f"--out {path} is not a medimg lake (no {LAKE_MARKER}); pass the folder ingest wrote"
        )
    return lake


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else text)


def _init(args: argparse.Namespace) -> int:
    from medimg_spark.access.policy import load_policy

    policy = load_policy(args.policy)
    directory = resolve_kms_dir(args.kms)
    kms = Kms.init(directory, policy)
    keys = sorted(kms.current_ids(policy.all_key_names()).values())
    print(f"KMS initialised at {kms.dir} (policy sha256 {policy.digest()[:16]}…); keys: {', '.join(keys)}")
    return EXIT_OK


def _protect(args: argparse.Namespace) -> int:
    from medimg_spark.access.lake import zone_tables

    lake = _lake(args.out)
    kms = _kms(args)
    zone_tables(kms.policy, lake, args.table)  # a bad --table fails here, before Spark starts
    from medimg_spark.access.spark import protect_lake
    from medimg_spark.session import build_session

    spark = build_session("medimg-access-protect", master=args.master)
    done = protect_lake(spark, lake, kms, tables=args.table or None, rekey=args.rekey)
    lines = [f"protect → {lake}"] + [
        f"  {t.table:<17} zone={t.zone:<13} {t.status:<9} encrypted={t.files_encrypted} kept={t.files_kept} "
        f"rows={t.rows} keys={','.join(t.keys)}"
        for t in done
    ]
    _print(args, [t.__dict__ for t in done], "\n".join(lines))
    return EXIT_OK


def _attrs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise ConfigError(f"--attr {item!r}: write KEY=VALUE, e.g. --attr project=pneumonia")
        out[k.strip()] = v.strip()
    return out


def _grant(args: argparse.Namespace) -> int:
    attrs = _attrs(args.attr)
    kms = _kms(args)
    from medimg_spark.access.errors import PolicyError

    try:
        policy = kms.grant(args.principal, args.role, attrs)
    except PolicyError as err:
        raise ConfigError(f"--role: {err}") from None
    p = policy.principals[args.principal]
    print(f"granted {args.role} to {args.principal}: roles={p.roles} attributes={p.attributes}")
    return EXIT_OK


def _revoke(args: argparse.Namespace) -> int:
    kms = _kms(args)
    from medimg_spark.access.errors import PolicyError

    try:
        rotated = kms.revoke(args.principal, args.role)
    except PolicyError as err:
        raise ConfigError(f"--principal/--role: {err}") from None
    print(
        f"revoked {args.role or 'every role'} of {args.principal}; rotated {len(rotated)} key(s): "
        f"{', '.join(rotated.values())}. Run 'medimg access protect --rekey' to move existing data to them."
    )
    return EXIT_OK


def _rotate(args: argparse.Namespace) -> int:
    kms = _kms(args)
    known = kms.policy.all_key_names()
    unknown = [k for k in args.key if k not in known]
    if unknown:
        raise ConfigError(
            f"--key {unknown[0]}: not a key of the policy; choose from {', '.join(sorted(known))}"
        )
    rotated = kms.rotate(args.key or known, reason="scheduled rotation")
    print(
        f"rotated {len(rotated)} key(s): {', '.join(rotated.values())}. New data uses them; "
        "'medimg access protect --rekey' moves existing data."
    )
    return EXIT_OK


def _policy(args: argparse.Namespace) -> int:
    from medimg_spark.access.policy import load_policy

    kms = _kms(args)
    if not args.new_policy:
        print(kms.policy.to_yaml(), end="")
        return EXIT_OK
    new = load_policy(args.new_policy)
    old = kms.policy.digest()
    kms.set_policy(new, details={"source": str(args.new_policy)})
    print(f"policy replaced ({old[:16]}… → {new.digest()[:16]}…); the change is in the audit log")
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from medimg_spark.access.lake import lake_status, read_manifest

    kms = _kms(args)
    cols = _columns(args)
    status: Any = "deidentified"
    table_columns = None
    if args.out:
        lake = _lake(args.out)
        status = lake_status(lake)
        manifest = read_manifest(lake / args.table)
        if manifest is not None:
            status, table_columns = manifest.lake, manifest.all_columns
    decision = kms.policy.decide(
        args.principal, args.table, cols, args.purpose, lake=status, table_columns=table_columns
    )
    _print(args, decision.to_json(), decision.message)
    return EXIT_OK if decision.allowed else EXIT_DENIED


def _audit(args: argparse.Namespace) -> int:
    kms = _kms(args)
    entries = list(kms.audit.entries()) if args.tail else []
    shown = entries[-args.tail :] if args.tail else []
    result = kms.audit.verify() if args.verify else None
    if args.json:
        print(json.dumps({"entries": shown, "verify": result.__dict__ if result else None}, indent=2))
    else:
        for e in shown:
            who = e.get("principal") or "-"
            print(
                f"{e['seq']:>5} {e['ts']} {e['actor']:<10} {e['action']:<17} {e['outcome']:<8} "
                f"principal={who} purpose={e.get('purpose') or '-'} target={e['target']}"
            )
        if result is not None:
            print(result.message)
    return EXIT_OK if result is None or result.ok else EXIT_DENIED


def _read(args: argparse.Namespace) -> int:
    lake = _lake(args.out)
    kms = _kms(args)
    cols = _columns(args)
    from medimg_spark.access.spark import load_secure, secure_read
    from medimg_spark.session import build_session

    # the KMS decides (and audits) before Spark starts: a denied read never starts a session
    read = secure_read(
        lake, args.table, principal=args.principal, purpose=args.purpose, columns=cols, kms=kms
    )
    spark = build_session("medimg-access-read", master=args.master)
    df = load_secure(spark, read)
    shown = [c for c in df.columns if c != "pixels"]
    print(
        f"{args.table} as {args.principal} ({args.purpose}): {df.count()} rows, columns {', '.join(df.columns)}"
    )
    df.select(*shown).show(args.limit, truncate=40)
    return EXIT_OK


PRINCIPAL_ENV = "MEDIMG_PRINCIPAL"


def authorize_reidentify(args: argparse.Namespace) -> None:
    """``medimg reidentify`` with a KMS (``--kms`` or ``$MEDIMG_KMS_DIR``): policy check and audit entry.

    Without a KMS the lookup runs as before, unaudited (a warning says so).

    Raises:
        ConfigError: a KMS is set but no principal (``--principal`` / ``$MEDIMG_PRINCIPAL``).
        AccessDeniedError: the principal's roles do not allow re-identification (audited).
    """
    import logging

    directory = getattr(args, "kms", None) or os.environ.get(KMS_DIR_ENV)
    if not directory:
        logging.getLogger("medimg").warning(
            "reidentify without an access-control KMS: not audited (pass --kms DIR --principal NAME)"
        )
        return
    principal = getattr(args, "principal", None) or os.environ.get(PRINCIPAL_ENV)
    if not principal:
        raise ConfigError(f"medimg reidentify with a KMS needs --principal NAME (or ${PRINCIPAL_ENV})")
    try:
        kms = Kms(directory)
    except KmsError as err:
        raise ConfigError(f"--kms: {err}") from None
    kms.authorize_reidentify(principal, args.pseudonym, str(args.vault))


_ACTIONS = {
    "init": _init,
    "protect": _protect,
    "grant": _grant,
    "revoke": _revoke,
    "rotate": _rotate,
    "policy": _policy,
    "check": _check,
    "audit": _audit,
    "read": _read,
}


def run(args: argparse.Namespace) -> int:
    """Dispatch one ``medimg access`` action."""
    if getattr(args, "kms", None) is None and not os.environ.get(KMS_DIR_ENV):
        raise ConfigError(f"medimg access {args.access_command}: pass --kms DIR or set ${KMS_DIR_ENV}")
    return _ACTIONS[args.access_command](args)
