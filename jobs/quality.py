"""spark-submit entry point: ``spark-submit jobs/quality.py ...`` (same arguments as ``medimg quality``)."""

from medimg_spark.cli import run_job

if __name__ == "__main__":
    run_job("quality")
