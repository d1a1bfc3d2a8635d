"""spark-submit entry point: ``spark-submit jobs/report.py --out DIR`` (same arguments as ``medimg report``)."""

from medimg_spark.cli import run_job

if __name__ == "__main__":
    run_job("report")
