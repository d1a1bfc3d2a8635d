"""The ``medimg`` command line: one verb per pipeline stage.

Exit codes: 0 success (bad files are quarantined, not failures), 2 bad configuration or
arguments (the message says what and how to fix it), 1 any other failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from medimg_spark.errors import ConfigError, JavaMissingError, MedimgError

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


def _add_ingest(sub: Any) -> None:
    p = sub.add_parser("ingest", help="read image files into images/instances/quarantine Parquet tables")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders (recursive)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--labels", help="CSV with columns path (or file_sha256), label[, split]")
    p.add_argument("--label-from-parent-dir", action="store_true", help="label = parent folder name")
    p.add_argument("--run-id", help="run id (default: generated)")
    _common(p)
    p.set_defaults(handler=cmd_ingest)


def _add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="run the pipeline stages listed in a YAML config")
    p.add_argument("--out", help="output directory (overrides pipeline.out)")
    _common(p)
    p.set_defaults(handler=cmd_run)


def build_parser() -> argparse.ArgumentParser:
    """The ``medimg`` argument parser with every verb."""
    parser = _Parser(prog="medimg", description="Distributed medical-image ETL and ML on Apache Spark")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_ingest(sub)
    _add_run(sub)
    return parser


def _session(args: argparse.Namespace, cfg: Any, app: str) -> Any:
    from medimg_spark.session import build_session

    return build_session(
        app_name=f"medimg-{app}", master=args.master or cfg.spark.master, conf=cfg.spark.conf
    )


def _print(summary: dict[str, Any], text: str, as_json: bool) -> None:
    print(json.dumps(summary, indent=2, default=str) if as_json else text)


def cmd_ingest(args: argparse.Namespace) -> int:
    """``medimg ingest``."""
    from medimg_spark.config import load_config
    from medimg_spark.io.ingest import format_summary, ingest

    cfg = load_config(args.config)
    if args.label_from_parent_dir:
        cfg.ingest.label_from_parent_dir = True
    spark = _session(args, cfg, "ingest")
    summary = ingest(spark, args.inputs, args.out, cfg.ingest, labels_csv=args.labels, run_id=args.run_id)
    _print(summary, format_summary(summary), args.json)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """``medimg run``."""
    from pathlib import Path

    from medimg_spark.config import load_config
    from medimg_spark.io.ingest import format_summary
    from medimg_spark.pipeline import load_pipeline, run_pipeline

    if not args.config:
        raise ConfigError("medimg run needs --config FILE (see conf/pipeline.yaml)")
    cfg = load_config(args.config)
    pc = load_pipeline(cfg, args.config)
    out = args.out or pc.out
    if not out:
        raise ConfigError(f"{args.config}: no output directory: set pipeline.out or pass --out")
    spark = _session(args, cfg, "run")
    results = run_pipeline(spark, cfg, pc, out, Path.cwd())
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        if "ingest" in results:
            print(format_summary(results["ingest"]))
        print(f"pipeline finished in {results['wall_time_s']} s; output under {Path(out).resolve()}")
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
        return handler(args)
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
    args = list(sys.argv[1:] if argv is None else argv)
    sys.exit(main([verb, *args]))


if __name__ == "__main__":
    sys.exit(main())
