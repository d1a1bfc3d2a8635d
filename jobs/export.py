"""spark-submit entry point: ``spark-submit jobs/export.py ...`` (same arguments as ``medimg export``)."""

from medimg_spark.cli import run_job

if __name__ == "__main__":
    run_job("export")
