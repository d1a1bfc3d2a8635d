"""`medimg run`: every stage from one YAML file, in-process on the test session; bad configs exit 2."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from medimg_spark.cli import EXIT_CONFIG, EXIT_OK, main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, sample_npz: Path) -> Path:
    src = tmp_path_factory.mktemp("pipeline_in")
    ref = np.load(sample_npz)
    buf = io.BytesIO()
    np.savez(
        buf,
        train_images=ref["train_images"][:120],
        train_labels=ref["train_labels"][:120],
        val_images=ref["val_images"][:60],
        val_labels=ref["val_labels"][:60],
    )
    (src / "small.npz").write_bytes(buf.getvalue())
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "ct.dcm")
    # a real 5-slice CT series, for the volumes stage
    series = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892001" / "CT5N"
    shutil.copytree(series, src / "ct5n")
    return src


def _config(tmp: Path, inputs: Path, stages: str, models: str) -> Path:
    cfg = tmp / "pipeline.yaml"
    cfg.write_text(f"""
volumes:
  filters: [{{op: gaussian, sigma_mm: 1.0}}]
  localize: {{threshold: otsu, min_voxels: 20}}
pipeline:
  inputs: ["{inputs}"]
  stages: {stages}
  recipes:
    - recipe: classify
      where: "source_format = 'npz'"
  features: {{source: processed, set: pixels14}}
  models: {models}
  evaluate_splits: [val]
  localize: [kmeans, mllib_kmeans]
""")
    return cfg


def test_full_pipeline_run(tmp_path: Path, inputs: Path, capsys) -> None:
    models = "[{name: lr, model: sk_logreg, train: {params: {C: 0.1}}}, {name: mlr, model: mllib_logreg}]"
    cfg = _config(
        tmp_path,
        inputs,
        "[ingest, preprocess, volumes, quality, features, train, predict, evaluate, localize, report]",
        models,
    )
    out, log = tmp_path / "out", tmp_path / "log.jsonl"
    code = main(["run", "--config", str(cfg), "--out", str(out), "--ephemeral-key", "--log-json", str(log)])
    printed = capsys.readouterr().out
    assert code == EXIT_OK
    for name in (
        "images",
        "processed",
        "features",
        "predictions",
        "regions",
        "clusters",
        "models/lr",
        "models/mlr",
        "volumes",
        "processed_volumes",
        "volume_quality",
        "volume_labels",
        "volume_regions",
    ):
        assert (out / name).is_dir(), name
    for model in ("lr", "mlr"):
        metrics = json.loads((out / "metrics" / f"eval_{model}_val.json").read_text())
        assert metrics["n"] == 60 and 0.5 < metrics["roc_auc"] <= 1.0
    import pandas as pd

    volumes = pd.read_parquet(out / "volumes", columns=["dim_z", "status", "source_format"])
    assert volumes.to_dict("records") == [{"dim_z": 5, "status": "ok", "source_format": "dicom"}]
    assert len(pd.read_parquet(out / "processed_volumes", columns=["volume_id"])) == 1
    assert len(pd.read_parquet(out / "volume_regions", columns=["volume_id"])) >= 1
    assert "accuracy" in printed and "report:" in printed
    assert (
        "volumes_written: 1" in printed
        and "filters gaussian" in printed
        and "localize localize-otsu" in printed
    )
    assert (out / "report" / "index.html").stat().st_size > 10_000
    ends = [json.loads(line)["stage"] for line in log.read_text().splitlines() if '"stage_end"' in line]
    assert ends == [
        "ingest",
        "preprocess",
        "volumes",
        "quality",
        "features",
        "train",
        "predict",
        "evaluate",
        "train",
        "predict",
        "evaluate",
        "localize",
        "localize",
        "report",
    ]


@pytest.mark.parametrize(
    ("stages", "models", "needle"),
    [
        ("[ingest, trian]", "[]", "unknown stage"),
        ("[features, train]", "[]", "pipeline.models is empty"),
        ("[train]", "[{name: x, model: sk_magic}]", "is unknown"),
        ("[train]", "[{name: x, model: sk_svc, train: {class_weigth: balanced}}]", "class_weigth"),
    ],
)
def test_bad_pipeline_config_exits_2(
    tmp_path: Path, inputs: Path, capsys, stages: str, models: str, needle: str
) -> None:
    cfg = _config(tmp_path, inputs, stages, models)
    assert main(["run", "--config", str(cfg), "--out", str(tmp_path / "o"), "--keep-phi"]) == EXIT_CONFIG
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["pipeline.yaml", "demo.yaml"])
def test_shipped_pipeline_configs_validate(name: str) -> None:
    from medimg_spark.config import deid_config, load_config
    from medimg_spark.pipeline import load_pipeline, validate_recipes

    cfg = load_config(REPO / "conf" / name)
    pc = load_pipeline(cfg, name)
    validate_recipes(pc, REPO)
    deid_config(cfg, name)
    assert pc.models and all(m.resolved(REPO)[0] for m in pc.models)


def test_model_from_experiment_file(tmp_path: Path) -> None:
    from medimg_spark.errors import ConfigError
    from medimg_spark.ml.experiment import load_experiment
    from medimg_spark.pipeline import ModelRun

    run = ModelRun(name="p", experiment="conf/pneumonia.yaml")
    estimator, options = run.resolved(REPO)
    exp = load_experiment(REPO / "conf" / "pneumonia.yaml")
    assert estimator == exp.shipped.model == "vote"
    assert options["params"]["members"] == exp.shipped.train.params["members"]
    # the members the shipped vote names are trained first, under their own names, then the vote as "p"
    runs = run.runs(REPO)
    assert [(n, e) for n, e, _ in runs] == [
        *((m.label, m.model) for m in exp.members),
        ("p", "vote"),
    ]
    svcs = dict((n, o) for n, _, o in runs)["pneumonia_svcs"]
    assert svcs["augment"]["copies"] == 2
    with pytest.raises(ConfigError, match="replaces 'model' and 'train'"):
        ModelRun(name="p", model="sk_svc", experiment="conf/pneumonia.yaml").resolved(REPO)
