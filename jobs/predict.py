"""spark-submit entry point: ``spark-submit jobs/predict.py ...`` (same arguments as ``medimg predict``)."""

from medimg_spark.cli import run_job

if __name__ == "__main__":
    run_job("predict")
