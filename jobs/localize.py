"""spark-submit entry point: ``spark-submit jobs/localize.py ...`` (same arguments as ``medimg localize``)."""

from medimg_spark.cli import run_job

if __name__ == "__main__":
    run_job("localize")
