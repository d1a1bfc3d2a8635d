"""Layering: the core (numpy/OpenCV) imports without pyspark, and ``cli`` ↔ ``pipeline`` form no cycle.

Each check runs a fresh interpreter, so modules imported by other tests in this process (pyspark
above all) cannot hide an import that only works because something else loaded it first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Installed first in the child: any import of pyspark or py4j fails as if they were not installed.
_BLOCK_SPARK = """
import importlib.abc, sys

class _NoSpark(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pyspark", "py4j"):
            raise ImportError(f"{name} is blocked: this layer must not import Spark")
        return None

sys.meta_path.insert(0, _NoSpark())
"""


def _run(code: str, block_spark: bool = True) -> dict:
    """Run ``code`` in a fresh interpreter (pyspark blocked) and return the JSON it prints last."""
    script = (_BLOCK_SPARK if block_spark else "") + textwrap.dedent(code)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_blocker_really_blocks_pyspark() -> None:
    out = _run(
        """
        import json
        try:
            import pyspark.sql
            blocked = False
        except ImportError as err:
            blocked = "blocked" in str(err)
        print(json.dumps({"blocked": blocked}))
        """
    )
    assert out == {"blocked": True}


def test_core_modules_import_and_run_without_pyspark() -> None:
    out = _run(
        """
        import json, sys
        import numpy as np
        from pydicom.data import get_testdata_file

        import medimg_spark
        import medimg_spark.ops
        import medimg_spark.quality
        import medimg_spark.io.files
        import medimg_spark.io.readers
        import medimg_spark.features.extract
        import medimg_spark.features.spec
        import medimg_spark.registry
        import medimg_spark.worker
        import medimg_spark.ml
        import medimg_spark.privacy
        import medimg_spark.report
        from medimg_spark.features import glcm_features, load_feature_set
        from medimg_spark.io.files import FileContext, process_file
        from medimg_spark.io.pixels import decode
        from medimg_spark.ops import apply_recipe, load_recipe
        from medimg_spark.quality import quality_metrics

        path = get_testdata_file("CT_small.dcm")
        with open(path, "rb") as f:
            rows = list(process_file("file:" + path, f.read(), FileContext(run_id="layers")))
        image = next(r for r in rows if r["_kind"] == "image")
        frame = decode(image["pixels"], image["rows"], image["cols"], image["channels"], image["dtype"])
        meta = {k: image.get(k) for k in ("rescale_slope", "rescale_intercept", "window_center", "window_width")}
        out, mask = apply_recipe(load_recipe("ct_lung"), frame, meta)
        print(json.dumps({
            "spark": sorted(m for m in sys.modules if m.split(".")[0] in ("pyspark", "py4j")),
            "kinds": sorted({r["_kind"] for r in rows}),
            "shape": list(out.shape),
            "finite": bool(np.isfinite(out).all()),
            "range": [float(out.min()), float(out.max())],
            "glcm": len(glcm_features(out)),
            "quality": sorted(quality_metrics(out))[:2],
            "feature_set": load_feature_set("texture").name,
            "version": medimg_spark.__version__,
        }))
        """
    )
    assert out["spark"] == []
    assert out["kinds"] == ["image", "instance"]
    assert out["shape"] == [128, 128] and out["finite"]
    assert 0.0 <= out["range"][0] < out["range"][1] <= 1.0
    assert out["glcm"] > 0 and out["feature_set"] == "texture"
    assert out["version"] == medimg_spark_version()


def medimg_spark_version() -> str:
    import medimg_spark

    return medimg_spark.__version__


def test_spark_layers_fail_cleanly_without_pyspark() -> None:
    """The Spark layer is what needs pyspark (so the blocker above is really in force for the package)."""
    out = _run(
        """
        import json
        try:
            import medimg_spark.preprocess  # a Spark stage: its schemas are pyspark types
            err = ""
        except ImportError as exc:
            err = str(exc)
        print(json.dumps({"err": err}))
        """
    )
    assert "pyspark" in out["err"]


@pytest.mark.parametrize("first", ["medimg_spark.pipeline", "medimg_spark.cli"])
def test_cli_and_pipeline_import_in_either_order_without_a_cycle(first: str) -> None:
    second = "medimg_spark.cli" if first == "medimg_spark.pipeline" else "medimg_spark.pipeline"
    out = _run(
        f"""
        import json, sys, importlib
        importlib.import_module({first!r})
        after_first = sorted(m for m in sys.modules if m.startswith("medimg_spark."))
        importlib.import_module({second!r})
        from medimg_spark.pipeline import resolve_recipe_path
        from pathlib import Path
        recipe = resolve_recipe_path("ct_lung", Path.cwd())
        print(json.dumps({{"after_first": after_first, "recipe": recipe,
                          "cli": "medimg_spark.cli" in sys.modules}}))
        """,
        block_spark=False,
    )
    assert out["recipe"] == "ct_lung"  # a shipped recipe resolves to its name (it may live in a zipped wheel)
    if first == "medimg_spark.pipeline":
        # pipeline needs nothing from the command line layer
        assert "medimg_spark.cli" not in out["after_first"]


def test_pipeline_resolves_recipes_without_importing_cli() -> None:
    out = _run(
        """
        import json, sys
        from pathlib import Path
        from medimg_spark.pipeline import resolve_recipe_path, STAGES
        path = resolve_recipe_path("ct_lung", Path.cwd())
        print(json.dumps({"cli": "medimg_spark.cli" in sys.modules, "path": path, "stages": list(STAGES)}))
        """
    )
    assert out["cli"] is False
    assert out["path"] == "ct_lung"  # the shipped recipe by name; load_recipe reads it from the package
    assert out["stages"][0] == "ingest" and out["stages"][-1] == "report"
