"""spark-submit entry point: ``spark-submit jobs/train.py ...`` (same arguments as ``medimg train``)."""

from medimg_spark.cli import run_job

if __name__ == "__main__":
    run_job("train")
