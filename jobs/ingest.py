"""spark-submit entry point: ``spark-submit jobs/ingest.py INPUT... --out DIR [--config FILE]``."""

from medimg_spark.cli import run_job

if __name__ == "__main__":
    run_job("ingest")
