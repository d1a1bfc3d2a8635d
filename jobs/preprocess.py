"""spark-submit entry point: ``spark-submit jobs/preprocess.py ...`` (same arguments as ``medimg preprocess``)."""

from medimg_spark.cli import run_job

if __name__ == "__main__":
    run_job("preprocess")
