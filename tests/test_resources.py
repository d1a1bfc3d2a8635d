"""Package data (medimg_spark.resources): shipped names, "name or path" resolution, error messages."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from medimg_spark import resources
from medimg_spark.cli import main
from medimg_spark.features import FeatureSetError, load_feature_set
from medimg_spark.ops import RecipeFileError, load_recipe
from medimg_spark.ops.recipe import resolve_recipe

REPO = Path(__file__).resolve().parents[1]
PACKAGED = REPO / "medimg_spark" / "resources"


def test_shipped_names_match_the_package_folder() -> None:
    for kind in resources.KINDS:
        names = resources.shipped_names(kind)
        assert names == sorted(p.stem for p in (PACKAGED / kind).glob("*.yaml")) and names
        for name in names:
            assert (
                resources.shipped_file(kind, name).read_text()
                == (PACKAGED / kind / f"{name}.yaml").read_text()
            )
    assert "ct_lung" in resources.shipped_names("recipes") and "pneumonia" in resources.shipped_names(
        "features"
    )
    assert "spark.sql.session.timeZone" in resources.read_shipped(resources.SPARK_DEFAULTS)
    assert resources.read_shipped(resources.PROFILE_TABLE).lstrip().startswith(("[", "{"))
    with pytest.raises(resources.ResourceNotFoundError, match="reinstall"):
        resources.shipped("privacy/nope.yaml")


def test_resolution_order_path_then_cwd_conf_then_shipped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    shipped = resources.resolve("recipes", "ct_lung")
    assert (shipped.origin, shipped.name) == ("shipped", "ct_lung")
    assert shipped.location == "medimg_spark/resources/recipes/ct_lung.yaml"
    assert resources.resolve("recipes", "ct_lung.yaml").origin == "shipped"
    assert resolve_recipe("ct_lung") == "ct_lung"
    # ./conf/recipes/<name>.yaml shadows the shipped recipe of the same name.
    local = tmp_path / "conf" / "recipes" / "ct_lung.yaml"
    local.parent.mkdir(parents=True)
    local.write_text("name: ct_lung\ndescription: my own\nsteps:\n  - op: minmax\n")
    found = resources.resolve("recipes", "ct_lung")
    assert (found.origin, found.location) == ("cwd", str(local))
    assert resolve_recipe("ct_lung") == str(local)
    assert load_recipe("ct_lung").description == "my own"
    # An existing path wins over both.
    own = tmp_path / "mine.yaml"
    own.write_text("name: mine\ndescription: a path\nsteps:\n  - op: zscore\n")
    assert resources.resolve("recipes", str(own)).origin == "path"
    assert load_recipe(own).name == "mine" and load_recipe(str(own)).description == "a path"
    # Feature sets follow the same order.
    assert load_feature_set("shape").name == "shape"
    fs_local = tmp_path / "conf" / "features" / "shape.yaml"
    fs_local.parent.mkdir(parents=True)
    fs_local.write_text("name: my_shape\nextractors:\n  - kind: intensity\n")
    assert load_feature_set("shape").name == "my_shape"


def test_unknown_names_raise_the_config_error_of_their_kind_listing_shipped_names(tmp_path: Path) -> None:
    with pytest.raises(RecipeFileError, match=r"'ct_lungs' not found.*chest_xray, classify, ct_lung"):
        load_recipe("ct_lungs")
    with pytest.raises(RecipeFileError, match=r"not found.*ct_lung"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(FeatureSetError, match=r"'textures' not found.*pneumonia.*--set"):
        load_feature_set("textures")
    code = main(["preprocess", "--out", str(tmp_path), "--recipe", "no_such_recipe"])
    assert code == 2


def test_help_lists_shipped_names(capsys) -> None:
    for verb, kind in (("preprocess", "recipes"), ("features", "features")):
        assert main([verb, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert all(name in text for name in resources.shipped_names(kind)), text


def test_resources_module_imports_only_the_standard_library_and_errors() -> None:
    """No pyspark (nor numpy) behind medimg_spark.resources: it is read on executors and by the CLI parser."""
    import ast

    imported: set[str] = set()
    for module in ("resources/__init__.py", "errors.py"):
        tree = ast.parse((REPO / "medimg_spark" / module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
    third_party = {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names}
    assert third_party == {"medimg_spark.errors"}, third_party
