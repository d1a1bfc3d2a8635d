"""spark-submit entry point: ``spark-submit jobs/reidentify.py ...`` (same arguments as ``medimg reidentify``)."""

from medimg_spark.cli import run_job

if __name__ == "__main__":
    run_job("reidentify")
