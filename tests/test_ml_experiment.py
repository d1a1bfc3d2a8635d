"""The shipped PneumoniaMNIST configuration parses, and the benchmark script runs end to end on a small subset."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from medimg_spark.ml import ModelConfigError
from medimg_spark.ml.experiment import load_experiment

REPO = Path(__file__).resolve().parents[1]


def test_shipped_config_is_valid_and_uses_val_rules() -> None:
    exp = load_experiment(REPO / "conf" / "pneumonia.yaml")
    assert exp.shipped.train.threshold.rule == "youden"
    assert exp.shipped.train.class_weight == "balanced"
    assert exp.shipped.train.val_split == "val" and exp.shipped.train.train_split == "train"
    fs = exp.features()
    names = fs.extract(np.zeros((28, 28), np.uint8))[1]
    # the shipped vote averages models trained first, under the names it lists
    assert exp.shipped.model == "vote"
    member_names = {m.label for m in exp.members}
    assert {m["name"] for m in exp.shipped.train.params["members"]} == member_names
    for spec in exp.members:
        assert spec.train.threshold.rule == "youden" and spec.train.class_weight == "balanced"
        for member in spec.train.params.get("members", []):  # the feature ensemble's blocks exist
            prefixes = member.get("features") or [""]
            assert any(n.startswith(tuple(prefixes)) for n in names), member
    assert any(spec.model == "cnn" for spec in exp.members)


def test_bad_experiment_file_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "x.yaml"
    bad.write_text("name: x\nfeature_set: texture\nshipped: {model: sk_svc, trian: {}}\n")
    with pytest.raises(ModelConfigError, match="trian"):
        load_experiment(bad)


# ~90 s: the whole benchmark script end to end (make integration); the experiment code paths are unit-tested above
@pytest.mark.integration
def test_benchmark_script_runs_and_writes_test_metrics(sample_npz: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_pneumonia", REPO / "benchmarks" / "pneumonia.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    d = np.load(sample_npz)
    test_npz = tmp_path / "test.npz"  # stands in for the held-back test split: real frames, test_* arrays
    np.savez(test_npz, test_images=d["val_images"][:120], test_labels=d["val_labels"][:120])
    out = tmp_path / "out"
    assert (
        bench.main(
            [
                *("--data", str(sample_npz), "--test", str(test_npz), "--out", str(out)),
                *("--limit", "300", "--cnn-epochs", "2"),
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics" / "eval_pneumonia_ensemble_test.json").read_text())
    assert m["n"] == 120 and m["split"] == "test" and m["positive"] == "1"
    assert m["roc_auc"] > 0.85 and 0 < m["threshold"] < 1
    card = json.loads((out / "models" / "pneumonia_ensemble" / "card.json").read_text())
    assert card["kind"] == "vote" and card["threshold"] == m["threshold"]
    svcs = json.loads((out / "models" / "pneumonia_svcs" / "card.json").read_text())
    assert svcs["n_train"] == 900 and svcs["augment"]["copies"] == 2
    cnn = json.loads((out / "models" / "pneumonia_cnn" / "card.json").read_text())
    assert cnn["kind"] == "cnn" and cnn["n_train"] == 300 and len(cnn["history"]) == 2
    table = (out / "benchmark.md").read_text()
    assert "pneumonia_ensemble (shipped)" in table and "pneumonia_cnn (member)" in table
