"""spark-submit entry point: ``spark-submit jobs/access.py ACTION ...`` (same arguments as ``medimg access``)."""

from medimg_spark.cli import run_job

if __name__ == "__main__":
    run_job("access")
