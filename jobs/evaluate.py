"""spark-submit entry point: ``spark-submit jobs/evaluate.py ...`` (same arguments as ``medimg evaluate``)."""

from medimg_spark.cli import run_job

if __name__ == "__main__":
    run_job("evaluate")
