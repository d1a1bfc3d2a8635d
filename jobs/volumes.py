"""spark-submit entry point: ``spark-submit jobs/volumes.py ...`` (same arguments as ``medimg volumes``)."""

from medimg_spark.cli import run_job

if __name__ == "__main__":
    run_job("volumes")
