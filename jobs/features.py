"""spark-submit entry point: ``spark-submit jobs/features.py ...`` (same arguments as ``medimg features``)."""

from medimg_spark.cli import run_job

if __name__ == "__main__":
    run_job("features")
