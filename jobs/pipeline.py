"""spark-submit entry point: ``spark-submit jobs/pipeline.py --config conf/pipeline.yaml [--out DIR]``."""

from medimg_spark.cli import run_job

if __name__ == "__main__":
    run_job("run")
