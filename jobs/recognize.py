"""spark-submit entry point: ``spark-submit jobs/recognize.py ...`` (same arguments as ``medimg recognize``)."""

from medimg_spark.cli import run_job

if __name__ == "__main__":
    run_job("recognize")
