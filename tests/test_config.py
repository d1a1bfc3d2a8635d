"""Every config section is typed, validated before Spark starts, and read by the stage it configures.

The probe covers every field of :class:`MedimgConfig` (a section added later is covered too): one
unknown key in the section makes the verb that reads it exit 2 naming ``section.key`` and the fix,
without starting Spark. Then the shipped configs validate, and each stage section changes what its
stage does, on a small real lake (PneumoniaMNIST frames plus pydicom's CT_small.dcm).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydicom.data import get_testdata_file

from medimg_spark.cli import EXIT_CONFIG, EXIT_OK, main
from medimg_spark.config import MedimgConfig, load_config

REPO = Path(__file__).resolve().parents[1]
SECTIONS = list(MedimgConfig.model_fields)
BAD_KEY = "no_such_option"
N_TRAIN, N_VAL = 24, 12

#: The verb that reads each section (arguments after the verb; DIR = an input folder, OUT = --out).
#: A section missing here is probed with ``medimg run``.
VERBS: dict[str, list[str]] = {
    "spark": ["quality", "--out", "OUT"],
    "ingest": ["ingest", "DIR", "--out", "OUT", "--ephemeral-key"],
    "privacy": ["deid", "DIR", "--out", "OUT", "--ephemeral-key"],
    "preprocess": ["preprocess", "--out", "OUT"],
    "features": ["features", "--out", "OUT"],
    "train": ["train", "--out", "OUT", "--model", "sk_logreg"],
    "localize": ["localize", "--out", "OUT", "--method", "kmeans"],
    "recognize": ["recognize", "--out", "OUT"],
    "report": ["report", "--out", "OUT"],
    "pipeline": ["run", "--out", "OUT", "--keep-phi"],
}

_PROBE = textwrap.dedent(
    """
    import contextlib, io, json, sys, time
    from pathlib import Path

    from medimg_spark.cli import main

    work = Path(sys.argv[1])
    probes = json.loads(sys.argv[2])
    bad_key = sys.argv[3]
    results = {}
    for section, argv in probes.items():
        cfg = work / f"{section}.yaml"
        cfg.write_text(f"{section}:\\n  {bad_key}: 1\\n")
        out = work / f"out_{section}"
        args = [str(work / "in") if a == "DIR" else str(out) if a == "OUT" else a for a in argv]
        err = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stderr(err):
            code = main([*args, "--config", str(cfg)])
        from pyspark import SparkContext

        results[section] = {
            "code": code,
            "err": err.getvalue(),
            "seconds": time.perf_counter() - started,
            "spark_started": SparkContext._active_spark_context is not None,
            "out_exists": out.exists(),
        }
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Run the probe for every section in one fresh interpreter (so no test session is active)."""
    work = tmp_path_factory.mktemp("probe")
    (work / "in").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), work / "in" / "ct.dcm")
    probes = {s: VERBS.get(s, ["run", "--out", "OUT", "--keep-phi"]) for s in SECTIONS}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(work), json.dumps(probes), BAD_KEY],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("section", SECTIONS)
def test_unknown_key_in_any_section_exits_2_before_spark(probe: dict[str, Any], section: str) -> None:
    got = probe[section]
    assert got["code"] == EXIT_CONFIG, got["err"]
    assert f"{section}.{BAD_KEY}" in got["err"]
    assert "remove it or fix its spelling" in got["err"]
    assert not got["spark_started"]
    assert not got["out_exists"]
    assert got["seconds"] < 10


def test_every_section_is_a_strict_model() -> None:
    for name, field in MedimgConfig.model_fields.items():
        model = field.annotation
        assert isinstance(model, type), name
        assert model.model_config.get("extra") == "forbid", name


def test_config_module_imports_nothing_heavy() -> None:
    """``medimg_spark.config`` (with every section model) loads without pyspark, OpenCV, sklearn, pydicom."""
    code = textwrap.dedent(
        f"""
        import sys, types
        pkg = types.ModuleType("medimg_spark")  # the package without its __init__ (which loads ingest)
        pkg.__path__ = [{str(REPO / "medimg_spark")!r}]
        sys.modules["medimg_spark"] = pkg
        import medimg_spark.config as c
        c.load_config({str(REPO / "conf" / "pipeline.yaml")!r})
        heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"pyspark", "cv2", "sklearn", "pandas",
                        "pydicom", "skimage", "pyarrow"}})
        print(",".join(heavy) or "none")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "none"


def test_errors_name_the_nested_key_and_the_fix(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "privacy: {retain_longitudinal_full_dates: true, retain_longitudinal_modified_dates: true}\n"
        "train: {threshold: {rule: median}}\n"
        "localize: {k: 0}\n"
        "pipeline: {stages: [ingest, trian]}\n"
        "report: {thumbs_per_recipe: 0}\n"
    )
    assert main(["report", "--out", str(tmp_path / "o"), "--config", str(cfg)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    for needle in (
        "privacy: Value error, retain_longitudinal_full_dates and retain_longitudinal_modified_dates",
        "train.threshold.rule",
        "localize.k",
        "unknown stage(s) ['trian']",
        "report.thumbs_per_recipe",
        "(change the value)",
    ):
        assert needle in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("path", sorted((REPO / "conf").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path) -> None:
    from medimg_spark.config import deid_config
    from medimg_spark.pipeline import validate_recipes

    data = yaml.safe_load(path.read_text())
    if "shipped" in data:  # an experiment file (conf/pneumonia.yaml)
        from medimg_spark.ml.experiment import load_experiment

        exp = load_experiment(path)
        assert exp.shipped.model and exp.features().extractors
        return
    if "principals" in data:  # an access policy (conf/access-policy.yaml)
        from medimg_spark.access import load_policy

        assert load_policy(path).principals
        return
    cfg = load_config(path)
    validate_recipes(cfg.pipeline, REPO, cfg)
    assert deid_config(cfg, path.name) == cfg.privacy
    assert cfg.pipeline.stages and cfg.pipeline.recipes and cfg.pipeline.models


def test_deid_config_switches_options_and_names_an_unknown_one() -> None:
    """``--option`` names (config_models.DEID_OPTIONS) switch the privacy flags; a typo is a ConfigError."""
    from medimg_spark.config import deid_config
    from medimg_spark.config_models import DEID_OPTIONS
    from medimg_spark.errors import ConfigError

    cfg = MedimgConfig()
    dcfg = deid_config(cfg, "<defaults>", ["retain-uids", "clean-descriptors"])
    assert dcfg.retain_uids and dcfg.clean_descriptors and not cfg.privacy.retain_uids
    assert set(DEID_OPTIONS.values()) <= set(type(dcfg).model_fields)
    with pytest.raises(ConfigError, match=r"unknown --option 'retain-uid'; choose from .*retain-uids"):
        deid_config(cfg, "<defaults>", ["retain-uid"])


def test_readme_lists_every_key_of_every_section() -> None:
    from medimg_spark.config import config_reference

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    block = readme[readme.index(start) + len(start) : readme.index(end)]
    assert block == config_reference(), "README is stale: paste medimg_spark.config.config_reference()"
    for section, info in MedimgConfig.model_fields.items():
        for key in info.annotation.model_fields:  # type: ignore[union-attr]
            assert f"`{section}.{key}`" in block


# ----------------------------------------------------------------------------- stages read their section


@pytest.fixture(scope="module")
def lake(spark: Any, sample_npz: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ingested lake: N_TRAIN + N_VAL PneumoniaMNIST frames and one CT frame."""
    from medimg_spark.io.ingest import ingest

    root = tmp_path_factory.mktemp("config_lake")
    src = root / "in"
    src.mkdir()
    ref = np.load(sample_npz)
    buf = io.BytesIO()
    np.savez(
        buf,
        train_images=ref["train_images"][:N_TRAIN],
        train_labels=ref["train_labels"][:N_TRAIN],
        val_images=ref["val_images"][:N_VAL],
        val_labels=ref["val_labels"][:N_VAL],
    )
    (src / "small.npz").write_bytes(buf.getvalue())
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "ct.dcm")
    out = root / "lake"
    summary = ingest(spark, [str(src)], str(out))
    assert summary["frames_written"] == N_TRAIN + N_VAL + 1
    return out


@pytest.fixture(scope="module")
def processed(spark: Any, lake: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lake with the PneumoniaMNIST frames preprocessed by chest_xray (frames + lung masks)."""
    from medimg_spark.preprocess import preprocess

    out = tmp_path_factory.mktemp("config_processed") / "lake"
    shutil.copytree(lake, out)
    preprocess(spark, str(out), "chest_xray", where="source_format = 'npz'")
    return out


def _copy(src: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "lake"
    shutil.copytree(src, dest)
    return dest


def _cli(capsys, *argv: str, config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    cfg = tmp_path / f"c{len(list(tmp_path.glob('c*.yaml')))}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    capsys.readouterr()
    code = main([*argv, "--config", str(cfg), "--json"])
    captured = capsys.readouterr()
    assert code == EXIT_OK, captured.err[-3000:]
    return json.loads(captured.out[captured.out.index("{") :])  # type: ignore[no-any-return]


def test_preprocess_section_names_the_recipe_and_filter(lake: Path, tmp_path: Path, capsys) -> None:
    out = _copy(lake, tmp_path)
    section = {"preprocess": {"recipe": "classify", "where": "source_format = 'npz'"}}
    got = _cli(capsys, "preprocess", "--out", str(out), config=section, tmp_path=tmp_path)
    assert got["recipe_name"] == "classify"
    assert got["frames_selected"] == N_TRAIN + N_VAL
    # a flag wins over the section
    got = _cli(
        capsys,
        "preprocess",
        "--out",
        str(out),
        "--where",
        "modality = 'CT'",
        config=section,
        tmp_path=tmp_path,
    )
    assert got["recipe_name"] == "classify" and got["frames_selected"] == 1
    capsys.readouterr()
    assert main(["preprocess", "--out", str(out)]) == EXIT_CONFIG
    assert "preprocess.recipe" in capsys.readouterr().err


def test_repeated_recipe_flags_run_in_one_pass_as_separate_runs_would(
    spark: Any, lake: Path, tmp_path: Path, capsys
) -> None:
    """``--recipe A --recipe B``: one pass (one run id), the same rows as two ``medimg preprocess`` runs."""
    from pyspark.testing import assertDataFrameEqual

    where = "source_format = 'npz'"
    one = _copy(lake, tmp_path / "one")
    got = _cli(
        capsys,
        "preprocess",
        "--out",
        str(one),
        "--recipe",
        "classify",
        "--recipe",
        "denoise",
        "--where",
        where,
        config={},
        tmp_path=tmp_path,
    )
    assert [p["recipe_name"] for p in got["passes"]] == ["classify", "denoise"]
    assert [p["frames_selected"] for p in got["passes"]] == [N_TRAIN + N_VAL] * 2
    assert got["frames_processed"] == sum(p["frames_processed"] for p in got["passes"]) > N_TRAIN + N_VAL
    two = _copy(lake, tmp_path / "two")
    for name in ("classify", "denoise"):
        alone = _cli(
            capsys,
            "preprocess",
            "--out",
            str(two),
            "--recipe",
            name,
            "--where",
            where,
            config={},
            tmp_path=tmp_path,
        )
        assert alone["recipe_name"] == name
    cols = ["image_id", "recipe_name", "recipe_hash", "pixels", "mask", "recipe_trace", "quality_after"]
    fused, separate = (spark.read.parquet(str(o / "processed")) for o in (one, two))
    assertDataFrameEqual(fused.select(cols), separate.select(cols))
    assert fused.select("preprocess_run_id").distinct().count() == 1
    assert separate.select("preprocess_run_id").distinct().count() == 2
    # every recipe is validated before Spark starts
    capsys.readouterr()
    argv = ["preprocess", "--out", str(one), "--recipe", "classify", "--recipe", "no_such_recipe"]
    assert main(argv) == EXIT_CONFIG
    assert "no_such_recipe" in capsys.readouterr().err


def _feature_matrix(spark: Any, out: Path) -> np.ndarray:
    rows = spark.read.parquet(str(out / "features")).orderBy("image_id").collect()
    return np.array([r["features"].toArray() for r in rows])


def test_features_section_sets_the_feature_set_source_and_masks(
    spark: Any, processed: Path, tmp_path: Path, capsys
) -> None:
    out = _copy(processed, tmp_path)
    section: dict[str, Any] = {"features": {"set": "pixels14", "source": "processed", "use_mask": True}}
    got = _cli(capsys, "features", "--out", str(out), config=section, tmp_path=tmp_path)
    assert got["feature_set"] == "pixels14" and got["n_features"] == 14 * 14
    assert got["n_images"] == N_TRAIN + N_VAL  # the processed table, not the 37 ingested frames
    masked = _feature_matrix(spark, out)
    section["features"]["use_mask"] = False
    _cli(capsys, "features", "--out", str(out), config=section, tmp_path=tmp_path)
    whole = _feature_matrix(spark, out)
    assert masked.shape == whole.shape
    assert (masked == 0).sum() > (whole == 0).sum()  # pixels outside the lung masks are zeroed
    # flags win over the section
    got = _cli(
        capsys,
        "features",
        "--out",
        str(out),
        "--set",
        "shape",
        "--from",
        "images",
        config=section,
        tmp_path=tmp_path,
    )
    assert got["feature_set"] == "shape" and got["n_images"] == N_TRAIN + N_VAL + 1


def test_train_section_sets_the_training_options(processed: Path, tmp_path: Path, capsys) -> None:
    out = _copy(processed, tmp_path)
    _cli(capsys, "features", "--out", str(out), config={"features": {"set": "pixels14"}}, tmp_path=tmp_path)
    section = {"train": {"threshold": {"rule": "fixed", "value": 0.37}, "grid": {"C": [0.01, 100.0]}}}
    got = _cli(capsys, "train", "--out", str(out), "--model", "sk_logreg", config=section, tmp_path=tmp_path)
    assert got["threshold"] == pytest.approx(0.37)
    assert sorted(p["params"]["C"] for p in got["search"]) == [0.01, 100.0]
    assert got["best_params"]["C"] in (0.01, 100.0)
    assert got["n_train"] == N_TRAIN and got["n_val"] == N_VAL


def test_localize_section_sets_the_clustering(spark: Any, processed: Path, tmp_path: Path, capsys) -> None:
    out = _copy(processed, tmp_path)
    counts = {}
    for k in (1, 3):
        section = {"localize": {"k": k, "source": "images", "foreground": "otsu_bright"}}
        got = _cli(
            capsys, "localize", "--out", str(out), "--method", "kmeans", config=section, tmp_path=tmp_path
        )
        counts[k] = (got["n_regions"], got["n_frames_with_regions"])
    assert counts[1][0] == counts[1][1] == N_TRAIN + N_VAL + 1  # images: every ingested frame, one region
    assert counts[3][0] > counts[3][1]
    regions = spark.read.parquet(str(out / "regions")).groupBy("image_id").count().collect()
    assert max(r["count"] for r in regions) == 3


def test_report_section_sets_title_and_sizes(processed: Path, tmp_path: Path, capsys) -> None:
    out = _copy(processed, tmp_path)
    default = _cli(capsys, "report", "--out", str(out), config={}, tmp_path=tmp_path)
    section = {"report": {"title": "Ward 7 <audit>", "thumbs_per_recipe": 1}}
    got = _cli(capsys, "report", "--out", str(out), config=section, tmp_path=tmp_path)
    html = Path(got["path"]).read_text(encoding="utf-8")
    assert "<title>Ward 7 &lt;audit&gt;</title>" in html
    assert (
        got["thumbnails"] > 0 and default["thumbnails"] == 4 * got["thumbnails"]
    )  # 4 frames vs 1 per recipe


def test_run_passes_every_stage_section(spark: Any, lake: Path, tmp_path: Path, capsys) -> None:
    """``medimg run``: preprocess/features/train/localize/report sections are read; pipeline.* keys win."""
    out = _copy(lake, tmp_path)
    config = {
        "pipeline": {
            "stages": ["preprocess", "features", "train", "localize", "report"],
            "features": {"set": "pixels14"},  # wins over features.set
            "models": [{"name": "lr", "model": "sk_logreg", "train": {"grid": {"C": [0.2, 0.3]}}}],
            "localize": ["kmeans"],
        },
        "preprocess": {"recipe": "classify", "where": "source_format = 'npz'"},
        "features": {"set": "texture", "source": "processed"},
        "train": {"grid": {"C": [9.0, 10.0]}, "threshold": {"rule": "fixed", "value": 0.41}},
        "localize": {"k": 1, "source": "processed", "foreground": "otsu_bright"},
        "report": {"title": "pipeline section test"},
    }
    got = _cli(capsys, "run", "--out", str(out), config=config, tmp_path=tmp_path)
    (pre,) = got["preprocess"]
    assert pre["recipe_name"] == "classify" and pre["frames_selected"] == N_TRAIN + N_VAL
    assert got["features"]["feature_set"] == "pixels14" and got["features"]["n_images"] == N_TRAIN + N_VAL
    (trained,) = got["train"]
    assert sorted(p["params"]["C"] for p in trained["search"]) == [0.2, 0.3]  # the model's grid wins
    assert trained["threshold"] == pytest.approx(0.41)  # the train section fills in the rest
    (loc,) = got["localize"]
    assert loc["n_regions"] == loc["n_frames_with_regions"] == N_TRAIN + N_VAL
    assert "<title>pipeline section test</title>" in Path(got["report"]["path"]).read_text(encoding="utf-8")
