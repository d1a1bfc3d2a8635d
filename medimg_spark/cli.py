"""The ``medimg`` command line: one verb per pipeline stage.

Exit codes: 0 success (bad files are quarantined, not failures), 2 bad configuration or
arguments (the message says what and how to fix it), 1 any other failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medimg_spark import resources
from medimg_spark.errors import ConfigError, JavaMissingError, MedimgError
from medimg_spark.runlog import RunLog
from medimg_spark.stages import STAGES

if TYPE_CHECKING:
    from medimg_spark.config import IngestConfig

log = logging.getLogger("medimg")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors raise :class:`ConfigError` (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (validated before Spark starts)")
    p.add_argument("--master", help="Spark master URL (default local[*]; ignored under spark-submit)")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.add_argument("--log-json", metavar="FILE", help="append JSON-lines stage events to FILE ('-' = stderr)")


def _add_ingest(p: argparse.ArgumentParser) -> None:
    """Arguments of ``medimg ingest``."""
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders (recursive)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--labels", help="CSV with columns path (or file_sha256), label[, split]")
    p.add_argument("--label-from-parent-dir", action="store_true", help="label = parent folder name")
    p.add_argument(
        "--split-by",
        choices=("file", "parent", "series", "study", "from_path"),
        help="assign a split to frames without one, by this group key (fractions and seed: the config's "
        "ingest.split; default fractions train .7 / val .15 / test .15)",
    )
    p.add_argument("--run-id", help="run id (default: generated)")
    p.add_argument(
        "--incremental",
        action="store_true",
        help="only files not ingested by earlier --incremental runs (checkpoint under DIR/_checkpoints)",
    )
    _privacy_args(p)
    p.add_argument(
        "--keep-phi",
        action="store_true",
        help="keep original identifiers (the output is marked IDENTIFIED); default is to de-identify",
    )
    _common(p)


def _privacy_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "de-identification (PS3.15 Basic Profile; options in the config's privacy section)"
    )
    g.add_argument("--key-file", help="pseudonymisation key file (0600); else $MEDIMG_DEID_KEY(_FILE)")
    g.add_argument(
        "--ephemeral-key", action="store_true", help="random key for demos (pseudonyms differ per run)"
    )
    g.add_argument("--vault", help="write the re-identification vault here (separate from --out)")
    g.add_argument("--vault-key-file", help="vault master-key file (0600); else $MEDIMG_VAULT_KEY_FILE")
    g.add_argument(
        "--allow-burned-in", action="store_true", help="do not quarantine frames that may carry text"
    )


def _add_deid(p: argparse.ArgumentParser) -> None:
    """Arguments of ``medimg deid``."""
    from medimg_spark.config_models import DEID_OPTIONS

    p.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM files or folders (recursive)")
    p.add_argument("--out", required=True, help="output directory (dicom/, deid_audit/, quarantine/)")
    p.add_argument("--profile", default="basic", choices=["basic"], help="confidentiality profile")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME",
        help="profile option, repeatable: " + ", ".join(DEID_OPTIONS),
    )
    _privacy_args(p)
    _common(p)


def _add_reidentify(p: argparse.ArgumentParser) -> None:
    """Arguments of ``medimg reidentify``."""
    p.add_argument("--vault", required=True, help="vault directory")
    p.add_argument(
        "--pseudonym", required=True, help="patient pseudonym, replacement UID or path pseudonym (deid-…)"
    )
    p.add_argument("--vault-key-file", help="vault master-key file; else $MEDIMG_VAULT_KEY_FILE")
    p.add_argument(
        "--kms", help="access-control KMS: the lookup is authorised and audited; else $MEDIMG_KMS_DIR"
    )
    p.add_argument("--principal", help="who asks (with --kms); else $MEDIMG_PRINCIPAL")


def _add_access(p: argparse.ArgumentParser) -> None:
    """Arguments of ``medimg access ACTION`` (see :mod:`medimg_spark.access.commands`)."""
    from medimg_spark.access.commands import add_args

    add_args(p)


def cmd_access(args: argparse.Namespace) -> int:
    """``medimg access init|protect|grant|revoke|rotate|policy|check|audit|read``."""
    from medimg_spark.access.commands import run

    return run(args)


def _add_preprocess(p: argparse.ArgumentParser) -> None:
    """Arguments of ``medimg preprocess``."""
    p.add_argument("--out", required=True, help="output directory holding images/")
    p.add_argument(
        "--recipe",
        action="append",
        metavar="NAME|FILE",
        help="recipe: a YAML path, or a name in ./conf/recipes/ or shipped ("
        + ", ".join(resources.shipped_names("recipes"))
        + "); default: the config's preprocess.recipe. Repeatable: the recipes run in one pass over the"
        " frames (one Spark job), each on every frame --where selects, as `medimg run` runs pipeline.recipes",
    )
    p.add_argument(
        "--where", help="SQL filter on the images table, e.g. \"modality = 'CT'\" (default: preprocess.where)"
    )
    _common(p)


def _add_volumes(p: argparse.ArgumentParser) -> None:
    """Arguments of ``medimg volumes`` (the config's ``volumes`` section holds the checks' options)."""
    p.add_argument("--out", required=True, help="output directory holding images/ (and processed/)")
    p.add_argument(
        "--table",
        choices=["images", "processed"],
        help="frames to assemble: images (stored pixels) or processed (a recipe's output, geometry from "
        "images); default: volumes.source, else images",
    )
    p.add_argument(
        "--recipe",
        help="--table processed: the recipe whose frames are used (name or recipe_hash); default: "
        "volumes.recipe, else the only recipe in processed/",
    )
    _common(p)


def _add_quality(p: argparse.ArgumentParser) -> None:
    """Arguments of ``medimg quality``."""
    p.add_argument("--out", required=True, help="output directory holding processed/")
    _common(p)


def _add_features(p: argparse.ArgumentParser) -> None:
    """Arguments of ``medimg features``."""
    p.add_argument("--out", required=True, help="output directory holding images/ or processed/")
    p.add_argument(
        "--from",
        dest="source",
        choices=["images", "processed"],
        help="table to compute from (default: the config's features.source, else images)",
    )
    p.add_argument(
        "--set",
        dest="feature_set",
        help="feature set: a YAML path, or a name in ./conf/features/ or shipped ("
        + ", ".join(resources.shipped_names("features"))
        + "); default: the config's features.set, else texture",
    )
    p.add_argument(
        "--recipe",
        help="--from processed: the recipe whose frames are used (name or recipe_hash); "
        "default: the config's features.recipe, else the only recipe in processed/",
    )
    _common(p)


def _add_train(p: argparse.ArgumentParser) -> None:
    """Arguments of ``medimg train``; the model choices are the estimator registry's names."""
    from medimg_spark.ml.models import ESTIMATORS

    p.add_argument("--out", required=True, help="output directory holding features/")
    p.add_argument(
        "--model",
        required=True,
        choices=ESTIMATORS.names(),
        metavar="MODEL",
        help="estimator: " + ", ".join(ESTIMATORS.names()),
    )
    p.add_argument("--name", help="saved model name (default: the estimator name)")
    _common(p)


def _add_predict(p: argparse.ArgumentParser) -> None:
    """Arguments of ``medimg predict``."""
    p.add_argument("--out", required=True, help="output directory holding features/")
    p.add_argument("--model", required=True, help="saved model directory (DIR/models/<name>)")
    p.add_argument("--split", help="only this split")
    _common(p)


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    """Arguments of ``medimg evaluate``."""
    p.add_argument("--out", required=True, help="output directory holding features/")
    p.add_argument("--model", required=True, help="saved model directory (DIR/models/<name>)")
    p.add_argument("--split", required=True, help="split to evaluate, e.g. val or test")
    _common(p)


def _add_localize(p: argparse.ArgumentParser) -> None:
    """Arguments of ``medimg localize``."""
    p.add_argument("--out", required=True, help="output directory")
    from medimg_spark.config_models import DATASET_METHODS, FRAME_METHODS

    p.add_argument(
        "--method",
        required=True,
        choices=[*FRAME_METHODS, *DATASET_METHODS],
        help="per-frame regions ("
        + ", ".join(FRAME_METHODS)
        + ") or dataset clusters ("
        + ", ".join(DATASET_METHODS)
        + ")",
    )
    _common(p)


def _add_recognize(p: argparse.ArgumentParser) -> None:
    """Arguments of ``medimg recognize`` (the config's ``recognize`` section holds the other options)."""
    p.add_argument("--out", required=True, help="output directory holding images/ or processed/")
    p.add_argument("--name", help="model name: DIR/models/<name> (default: recognize.name)")
    p.add_argument(
        "--from",
        dest="source",
        choices=["images", "processed"],
        help="table whose frames are recognised (default: recognize.source)",
    )
    p.add_argument(
        "--method",
        choices=["slic", "quickshift"],
        help="superpixel method (default: recognize.superpixels.method)",
    )
    _common(p)


def _add_report(p: argparse.ArgumentParser) -> None:
    """Arguments of ``medimg report``."""
    p.add_argument("--out", required=True, help="output directory of the pipeline")
    _common(p)


def _add_run(p: argparse.ArgumentParser) -> None:
    """Arguments of ``medimg run``."""
    p.add_argument("--out", help="output directory (overrides pipeline.out)")
    p.add_argument("--incremental", action="store_true", help="ingest only files not seen by earlier runs")
    _privacy_args(p)
    p.add_argument(
        "--keep-phi", action="store_true", help="ingest keeps original identifiers (output IDENTIFIED)"
    )
    _common(p)


def build_parser() -> argparse.ArgumentParser:
    """The ``medimg`` argument parser with every verb."""
    parser = _Parser(prog="medimg", description="Distributed medical-image ETL and ML on Apache Spark")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for stage in STAGES.entries():  # one subcommand per registered stage, in registration order
        spec = stage.load()
        p = sub.add_parser(spec.name, help=spec.help)
        spec.load_add_args()(p)
        p.set_defaults(handler=spec.load_run())
    return parser


def _session(args: argparse.Namespace, cfg: Any, app: str) -> Any:
    from medimg_spark.session import build_session

    return build_session(
        app_name=f"medimg-{app}", master=args.master or cfg.spark.master, conf=cfg.spark.conf
    )


def _print(args: argparse.Namespace, summary: Mapping[str, object], text: str) -> None:
    """Print a verb's summary (``--json``: as JSON) and add its counts to the ``--log-json`` end event."""
    record = getattr(args, "log_record", None)
    if record is not None:
        # the numeric fields, as `medimg run` logs them for its stages
        record.update(
            {k: v for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        )
        for key in ("run_id", "out"):
            if isinstance(summary.get(key), str):
                record[key] = summary[key]
    print(json.dumps(summary, indent=2, default=str) if args.json else text)


def _log_name_in(out: str, log_json: str | None) -> tuple[str, ...]:
    """The ``--log-json`` file's name when it lies directly in ``out`` (it is not lake content)."""
    import os

    from medimg_spark.storage import is_local, local_path

    if not log_json or log_json == "-" or not is_local(out):
        return ()
    target = os.path.realpath(log_json)
    folder = os.path.realpath(local_path(out))
    return (os.path.basename(target),) if os.path.dirname(target) == folder else ()


def check_lake_out(out: str, log_json: str | None = None) -> None:
    """Before Spark starts: refuse a local ``--out`` that is not a medimg lake, else mark it as one.

    URIs (``hdfs://``, ``s3a://``) are checked by ingest through Spark's Hadoop file system, right
    after the session starts and before any job.

    Raises:
        NotALakeError: a ConfigError (exit code 2) naming the directory and the fix.
    """
    from medimg_spark.io.ingest import prepare_lake
    from medimg_spark.storage import is_local

    if not is_local(out):
        return
    prepare_lake(out, None, ignore=_log_name_in(out, log_json))


def _load_key(args: argparse.Namespace) -> bytes:
    from medimg_spark.privacy import DeidKeyError, load_key

    try:
        return load_key(args.key_file, ephemeral=args.ephemeral_key)
    except DeidKeyError as err:
        raise ConfigError(
            f"{err}. On the command line: --key-file FILE, --ephemeral-key (demos), or --keep-phi to keep "
            "identifiers"
        ) from None


def ingest_deidentifier(args: argparse.Namespace, cfg: Any, run_id: str) -> Any:
    """Build the de-identification hook for ingest from flags and config (None with --keep-phi)."""
    if args.keep_phi:
        if args.vault or args.key_file or args.ephemeral_key:
            raise ConfigError(
                "--keep-phi keeps identifiers: drop --vault/--key-file/--ephemeral-key, or --keep-phi"
            )
        return None
    from medimg_spark.config import deid_config
    from medimg_spark.privacy import Deidentifier
    from medimg_spark.privacy.hook import IngestDeidentifier
    from medimg_spark.privacy.vault import resolve_vault_key_file

    dcfg = deid_config(cfg, args.config or "<defaults>")
    key = _load_key(args)
    vault_key = None
    if args.vault:
        vault_key = resolve_vault_key_file(args.vault_key_file or dcfg.vault_key_file)
    deid = Deidentifier(dcfg, key, allow_burned_in=args.allow_burned_in)
    return IngestDeidentifier(deid, vault_dir=args.vault, vault_key_file=vault_key, run_id=run_id)


def ingest_options(
    ingest_cfg: IngestConfig, label_from_parent_dir: bool, split_by: str | None, source: str | None
) -> IngestConfig:
    """The ``ingest`` section with ``--label-from-parent-dir`` / ``--split-by`` applied, validated again.

    Raises:
        ConfigError: the combination is invalid (e.g. ``--split-by parent`` with labels from the folders).
    """
    from medimg_spark.config import IngestConfig, SplitRule, validate_section

    data = ingest_cfg.model_dump(exclude_unset=True)
    if label_from_parent_dir:
        data["label_from_parent_dir"] = True
    if split_by:
        rule = ingest_cfg.split or SplitRule()
        data["split"] = {**rule.model_dump(), "by": split_by}
    result: IngestConfig = validate_section(
        IngestConfig, data, f"{source or '<defaults>'}: ingest (with the command-line flags)"
    )
    return result


def cmd_ingest(args: argparse.Namespace) -> int:
    """``medimg ingest``."""
    from medimg_spark.config import load_config
    from medimg_spark.io.ingest import (
        check_inputs,
        format_summary,
        ingest,
        ingest_incremental,
        new_run_id,
        read_labels,
    )

    cfg = load_config(args.config)
    check_inputs(args.inputs)
    if args.labels:
        read_labels(args.labels)  # validated before Spark starts
    if args.label_from_parent_dir or args.split_by:
        cfg.ingest = ingest_options(cfg.ingest, args.label_from_parent_dir, args.split_by, args.config)
    run_id = args.run_id or new_run_id()
    hook = ingest_deidentifier(args, cfg, run_id)
    check_lake_out(args.out, args.log_json)
    spark = _session(args, cfg, "ingest")
    run = ingest_incremental if args.incremental else ingest
    summary = run(
        spark, args.inputs, args.out, cfg.ingest, labels_csv=args.labels, deidentify=hook, run_id=run_id
    )
    _print(args, dict(summary), format_summary(summary))
    return EXIT_OK


def cmd_deid(args: argparse.Namespace) -> int:
    """``medimg deid``."""
    from medimg_spark.config import deid_config, load_config
    from medimg_spark.privacy import run_deid

    cfg = load_config(args.config)
    dcfg = deid_config(cfg, args.config or "<defaults>", args.option)
    key = _load_key(args)
    spark = _session(args, cfg, "deid")
    summary = run_deid(
        spark,
        args.inputs,
        args.out,
        dcfg,
        key,
        vault_dir=args.vault,
        allow_burned_in=args.allow_burned_in,
        vault_key_file=args.vault_key_file,
    )
    text = "\n".join(f"  {k}: {v}" for k, v in summary.items())
    _print(args, summary, f"deid run → {args.out}\n{text}")
    return EXIT_OK


def cmd_reidentify(args: argparse.Namespace) -> int:
    """``medimg reidentify``."""
    from medimg_spark.access.commands import authorize_reidentify
    from medimg_spark.privacy import reidentify
    from medimg_spark.privacy.vault import resolve_vault_key_file

    authorize_reidentify(args)  # with a KMS: allowed by the policy, audited (kind and digest only)
    found = reidentify(args.vault, args.pseudonym, resolve_vault_key_file(args.vault_key_file))
    print(json.dumps(found, indent=2, default=str))
    return EXIT_OK


def _recipe_line(summary: Mapping[str, object]) -> str:
    """One recipe's preprocess summary on one line (``medimg preprocess`` with several recipes, ``medimg run``)."""
    return f"preprocess {summary.get('recipe_name')}: " + ", ".join(f"{k}={v}" for k, v in summary.items())


def cmd_preprocess(args: argparse.Namespace) -> int:
    """``medimg preprocess``."""
    from medimg_spark.config import load_config
    from medimg_spark.ops import load_recipe
    from medimg_spark.ops.recipe import resolve_recipe
    from medimg_spark.pipeline import summed_counts
    from medimg_spark.preprocess import RecipePass, preprocess, preprocess_passes

    cfg = load_config(args.config)
    names = args.recipe or ([cfg.preprocess.recipe] if cfg.preprocess.recipe else [])
    if not names:
        raise ConfigError(
            "medimg preprocess needs a recipe: pass --recipe NAME|FILE or set preprocess.recipe in --config"
        )
    recipes = [resolve_recipe(name) for name in names]
    for recipe in recipes:
        load_recipe(recipe)  # validate before Spark starts
    where = args.where if args.where is not None else cfg.preprocess.where
    spark = _session(args, cfg, "preprocess")
    if len(recipes) == 1:
        summary = preprocess(spark, args.out, recipes[0], where=where)
        text = "\n".join(f"  {k}: {v}" for k, v in summary.items())
        _print(args, summary, f"preprocess → {args.out}/processed\n{text}")
        return EXIT_OK
    summaries = preprocess_passes(spark, args.out, [RecipePass(r, where) for r in recipes])
    combined = {**summed_counts(summaries), "passes": summaries}
    lines = "\n".join(_recipe_line(s) for s in summaries)
    _print(args, combined, f"preprocess → {args.out}/processed\n{lines}")
    return EXIT_OK


def cmd_volumes(args: argparse.Namespace) -> int:
    """``medimg volumes``: flags win over the config's ``volumes`` section."""
    from medimg_spark.config import load_config
    from medimg_spark.volumes.stage import format_run_summary, run_volumes

    cfg = load_config(args.config)
    if args.recipe and (args.table or cfg.volumes.source) != "processed":
        raise ConfigError("--recipe selects processed frames: add --table processed (or set volumes.source)")
    spark = _session(args, cfg, "volumes")
    summary = run_volumes(spark, args.out, cfg.volumes, table=args.table, recipe=args.recipe)
    _print(args, dict(summary), format_run_summary(summary))
    return EXIT_OK


def cmd_quality(args: argparse.Namespace) -> int:
    """``medimg quality``."""
    from medimg_spark.config import load_config
    from medimg_spark.preprocess import format_quality_table, quality_report

    cfg = load_config(args.config)
    spark = _session(args, cfg, "quality")
    report = quality_report(spark, args.out)
    _print(args, report, format_quality_table(report))
    return EXIT_OK


def _ml_errors() -> tuple[type[Exception], ...]:
    from medimg_spark.features import FeatureSetError
    from medimg_spark.ml import ModelConfigError

    return (ModelConfigError, FeatureSetError)


def cmd_features(args: argparse.Namespace) -> int:
    """``medimg features``."""
    from medimg_spark.config import load_config
    from medimg_spark.features import compute_features, load_feature_set

    cfg = load_config(args.config)
    feature_set = args.feature_set or cfg.features.set
    try:
        load_feature_set(feature_set)  # validate before Spark starts
    except _ml_errors() as err:
        raise ConfigError(str(err)) from None
    spark = _session(args, cfg, "features")
    summary = compute_features(
        spark,
        args.out,
        source=args.source or cfg.features.source,
        feature_set=feature_set,
        use_mask=cfg.features.use_mask,
        recipe=args.recipe or cfg.features.recipe,
    )
    shown = {k: v for k, v in summary.items() if k != "feature_names"}
    _print(args, summary, "features → " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    """``medimg train``: the config's ``train`` section holds the training options."""
    from medimg_spark.config import load_config
    from medimg_spark.ml import train
    from medimg_spark.ml.models import check_model_options

    cfg = load_config(args.config)
    tcfg = cfg.train
    check_model_options(args.model, tcfg)  # CNN / vote options fail here, before Spark starts
    if args.name:
        from medimg_spark.storage import join

        tcfg = tcfg.model_copy(update={"model_dir": join(args.out, "models", args.name)})
    spark = _session(args, cfg, "train")
    summary = train(spark, args.out, args.model, tcfg)
    _print(args, summary, "train → " + ", ".join(f"{k}={v}" for k, v in summary.items()))
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    """``medimg predict``."""
    from medimg_spark.config import load_config
    from medimg_spark.ml import predict

    cfg = load_config(args.config)
    spark = _session(args, cfg, "predict")
    summary = predict(spark, args.out, args.model, split=args.split)
    _print(args, summary, "predict → " + ", ".join(f"{k}={v}" for k, v in summary.items()))
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``medimg evaluate``."""
    from medimg_spark.config import load_config
    from medimg_spark.ml import evaluate, format_metrics

    cfg = load_config(args.config)
    spark = _session(args, cfg, "evaluate")
    metrics = evaluate(spark, args.out, args.model, args.split)
    _print(args, metrics, format_metrics(metrics, f"{metrics.get('model')} on {args.split}"))
    return EXIT_OK


def cmd_localize(args: argparse.Namespace) -> int:
    """``medimg localize``: the config's ``localize`` section holds the options."""
    from medimg_spark.config import load_config
    from medimg_spark.ml import localize

    cfg = load_config(args.config)
    spark = _session(args, cfg, "localize")
    summary = localize(spark, args.out, args.method, cfg.localize)
    _print(args, summary, "localize → " + ", ".join(f"{k}={v}" for k, v in summary.items()))
    return EXIT_OK


def cmd_recognize(args: argparse.Namespace) -> int:
    """``medimg recognize``: flags win over the config's ``recognize`` section."""
    from medimg_spark.config import load_config
    from medimg_spark.ml.recognize import recognize

    cfg = load_config(args.config)
    rcfg = cfg.recognize
    if args.source:
        rcfg = rcfg.model_copy(update={"source": args.source})
    if args.method:
        rcfg = rcfg.model_copy(
            update={"superpixels": rcfg.superpixels.model_copy(update={"method": args.method})}
        )
    if rcfg.region_labels == "mask" and rcfg.source != "processed":
        raise ConfigError(
            "recognize.region_labels: mask needs the processed table's masks: set recognize.source: "
            "processed (or --from processed), or region_labels: mil"
        )
    spark = _session(args, cfg, "recognize")
    summary = recognize(spark, args.out, rcfg, name=args.name)
    _print(args, summary, "recognize → " + ", ".join(f"{k}={v}" for k, v in summary.items()))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """``medimg report``."""
    from medimg_spark.config import load_config
    from medimg_spark.report import build_report, format_summary

    cfg = load_config(args.config)
    spark = _session(args, cfg, "report")
    summary = build_report(spark, args.out, cfg.report)
    _print(args, summary, format_summary(summary))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """``medimg run``."""
    from medimg_spark.config import load_config
    from medimg_spark.io.ingest import format_summary, new_run_id
    from medimg_spark.pipeline import (
        StageOutcome,
        format_progress,
        load_pipeline,
        run_pipeline,
        validate_recipes,
    )

    if not args.config:
        raise ConfigError("medimg run needs --config FILE (see conf/pipeline.yaml)")
    cfg = load_config(args.config)
    pc = load_pipeline(cfg, args.config)
    out = args.out or pc.out
    if not out:
        raise ConfigError(f"{args.config}: no output directory: set pipeline.out or pass --out")
    validate_recipes(pc, Path.cwd(), cfg)
    run_id = new_run_id()
    hook = ingest_deidentifier(args, cfg, run_id) if "ingest" in pc.stages else None
    if "ingest" in pc.stages:
        check_lake_out(out, args.log_json)
    spark = _session(args, cfg, "run")
    log = RunLog(args.log_json)
    outcomes: list[StageOutcome] = []
    try:
        results = run_pipeline(
            spark,
            cfg,
            pc,
            out,
            Path.cwd(),
            deidentify=hook,
            run_id=run_id,
            log=log,
            incremental=args.incremental,
            outcomes=outcomes,
        )
    except BaseException:
        # the stages that finished keep their outputs: say which, and where, before the error
        print(format_progress(outcomes), file=sys.stderr)
        raise
    finally:
        log.close()
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        from medimg_spark.preprocess import format_quality_table

        if "ingest" in results:
            print(format_summary(results["ingest"]))
        for pre in results.get("preprocess", []):
            print(_recipe_line(pre))
        if "volumes" in results:
            from medimg_spark.volumes.stage import format_run_summary

            steps = {"filters": results.get("volumes_filters"), "localize": results.get("volumes_localize")}
            print(format_run_summary({"assemble": results["volumes"], **steps}))  # type: ignore[typeddict-item]
        if "quality" in results:
            print(format_quality_table(results["quality"]))
        if "evaluate" in results:
            from medimg_spark.ml import format_metrics

            for m in results["evaluate"]:
                print(format_metrics(m, f"{m.get('model')} on {m.get('split')}"))
        for rec in results.get("recognize", []):
            print(f"recognize {rec['model_name']}: " + ", ".join(f"{k}={v}" for k, v in rec.items()))
        if "report" in results:
            print(f"report: {results['report'].get('path')}")
        import os

        from medimg_spark.storage import is_local, local_path

        where = os.path.realpath(local_path(out)) if is_local(out) else out
        print(f"pipeline finished in {results['wall_time_s']} s; output under {where}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medimg`` console script and of ``jobs/*.py``."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)
    try:
        args = build_parser().parse_args(argv)
        if args.verbose:
            logging.getLogger().setLevel(logging.DEBUG)
        handler: Callable[[argparse.Namespace], int] = args.handler
        if args.command == "run":  # logs its pipeline and each stage itself
            return handler(args)
        run_log = RunLog(getattr(args, "log_json", None))
        try:
            with run_log.stage(args.command, out=getattr(args, "out", None)) as record:
                args.log_record = record
                return handler(args)
        finally:
            run_log.close()
    except (ConfigError, JavaMissingError) as err:
        print(f"medimg: error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except MedimgError as err:
        print(f"medimg: failed: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)


def run_job(verb: str, argv: Sequence[str] | None = None) -> None:
    """Body of a thin ``jobs/<verb>.py`` entry point for ``spark-submit``."""
    STAGES.entry(verb)  # an unknown verb names the registered stages
    args = list(sys.argv[1:] if argv is None else argv)
    sys.exit(main([verb, *args]))


if __name__ == "__main__":
    sys.exit(main())
