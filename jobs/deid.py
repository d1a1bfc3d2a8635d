"""spark-submit entry point: ``spark-submit jobs/deid.py ...`` (same arguments as ``medimg deid``)."""

from medimg_spark.cli import run_job

if __name__ == "__main__":
    run_job("deid")
