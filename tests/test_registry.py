"""The registries: ops, readers, estimators and stages are each one Registry, and what is derived from them."""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medimg_spark.errors import ConfigError, UnsupportedFormatError
from medimg_spark.io.files import FileContext, process_file
from medimg_spark.io.model import Frame, ParsedFile
from medimg_spark.io.readers import READERS, Reader, reader_for, register_reader, supported_formats
from medimg_spark.ml.errors import ModelConfigError
from medimg_spark.ml.estimators import MLLIB_MODELS, SKLEARN_MODELS, build_sklearn
from medimg_spark.ml.models import ESTIMATORS, model_kind
from medimg_spark.ops import RecipeConfigError, parse_recipe
from medimg_spark.ops._step import STEPS, Step
from medimg_spark.ops.recipe import STEP_MODELS
from medimg_spark.registry import DuplicateNameError, Registry, UnknownNameError
from medimg_spark.stages import STAGES, pipeline_stages

ROOT = Path(__file__).resolve().parents[1]


def test_registry_registers_once_lists_in_order_and_names_the_fix() -> None:
    reg: Registry[int] = Registry("widget", hint="add one in widgets.py")
    reg.register("b", 2, help="the second")

    @reg.register("a", help="decorated")
    def a() -> int:
        return 1

    reg.register_lazy("sqrt", "math:sqrt", help="lazy", kind="fn")
    assert reg.names() == ("b", "a", "sqrt") and reg.names(kind="fn") == ("sqrt",)
    assert not reg.entry("sqrt").loaded
    assert reg.get("sqrt")(9.0) == 3.0 and reg.entry("sqrt").loaded
    assert reg.get("a") is a and reg.entry("b").help == "the second"
    with pytest.raises(DuplicateNameError, match="widget 'b' is registered twice"):
        reg.register("b", 3)
    with pytest.raises(UnknownNameError) as err:
        reg.get("c")
    assert str(err.value) == "unknown widget 'c'; choose from b, a, sqrt; add one in widgets.py"
    assert isinstance(err.value, ConfigError)  # exit code 2 on the command line
    with pytest.raises(ValueError, match="module:attribute"):
        reg.register_lazy("bad", "math.sqrt")
    reg.unregister("b")
    assert "b" not in reg and len(reg) == 2


def test_every_op_registers_its_step_next_to_its_function() -> None:
    assert list(STEP_MODELS) == list(STEPS.names())
    assert len(STEPS) == 35
    for name in STEPS:
        model = STEPS.get(name)
        assert issubclass(model, Step) and model.model_fields["op"].annotation is not str
        module = model.__module__.rsplit(".", 1)[-1]
        assert module in {
            "clean",
            "convert",
            "denoise",
            "enhance",
            "filters",
            "morphology",
            "normalize",
            "segment",
        }
        assert STEPS.entry(name).help  # the class docstring's first line
    assert STEPS.names(kind="segment") == (
        "threshold",
        "otsu",
        "adaptive_threshold",
        "canny_fill",
        "watershed",
        "texture_kmeans",
        "superpixels",
    )
    with pytest.raises(RecipeConfigError, match=r"unknown op 'gausian'; choose from .*gaussian"):
        STEPS.get("gausian")
    with pytest.raises(
        RecipeConfigError, match=r"put a segmentation step \(threshold, otsu, .*superpixels\)"
    ):
        parse_recipe({"name": "r", "steps": [{"op": "fill_holes"}]})


def test_a_duplicate_op_is_refused() -> None:
    from typing import Literal

    from medimg_spark.ops._step import register_step

    class Again(Step):
        op: Literal["gaussian"]

    with pytest.raises(DuplicateNameError, match="op 'gaussian' is registered twice"):
        register_step(Again)


def _ct_frame() -> np.ndarray:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    arr = ds.pixel_array.astype(np.float64)
    return np.round((arr - arr.min()) / (arr.max() - arr.min()) * 255).astype(np.uint8)


def parse_pgm(data: bytes, fmt: str, ctx: FileContext) -> ParsedFile:
    def decode():  # type: ignore[no-untyped-def]
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        yield Frame(0, arr, {"photometric": "MONOCHROME2"})

    return ParsedFile(fmt, ctx.default_modality, True, 1, instance_meta={"header_json": None}, decode=decode)


def test_a_format_is_one_registered_reader_with_a_sniff() -> None:
    frame = _ct_frame()
    ok, buf = cv2.imencode(".pgm", frame)
    assert ok and bytes(buf[:2]) == b"P5"
    data = bytes(buf)
    before = list(process_file("file:/x/ct.pgm", data, FileContext(run_id="r")))
    assert [r["_kind"] for r in before] == ["quarantine"]
    assert before[0]["error_class"] == "UnsupportedFormatError"
    assert "(DICOM, PNG, JPEG, TIFF, NIfTI-1/2, MedMNIST npz, NRRD, MetaImage)" in before[0]["error_message"]
    register_reader(
        Reader(
            "pgm", ("pgm",), "PGM", f"{__name__}:parse_pgm", sniff=lambda d: "pgm" if d[:2] == b"P5" else None
        )
    )
    try:
        assert supported_formats().endswith(", PGM")
        rows = list(process_file("file:/x/ct.pgm", data, FileContext(run_id="r")))
        image = next(r for r in rows if r["_kind"] == "image")
        assert image["source_format"] == "pgm" and (image["rows"], image["cols"]) == frame.shape
        assert np.frombuffer(image["pixels"], np.uint8).reshape(frame.shape).tolist() == frame.tolist()
    finally:
        READERS.unregister("pgm")
    with pytest.raises(UnsupportedFormatError, match=r"matches no supported format \(DICOM, .*MetaImage\)$"):
        reader_for(None, data)


def test_builtin_readers_cover_every_detected_format() -> None:
    from medimg_spark.io import detect

    formats = (detect.DICOM, detect.PNG, detect.JPEG, detect.TIFF, detect.NIFTI1, detect.NIFTI2, detect.NPZ)
    for fmt in (*formats, detect.NRRD, detect.METAIMAGE):
        got, reader = reader_for(fmt)
        assert got == fmt and callable(reader.load())
    assert READERS.names() == ("dicom", "raster", "nifti", "npz", "nrrd", "metaimage")


def test_estimators_are_one_registry_for_sklearn_and_mllib() -> None:
    assert tuple(SKLEARN_MODELS) == ESTIMATORS.names(kind="sklearn")
    assert ESTIMATORS.names(kind="mllib") == MLLIB_MODELS
    assert set(ESTIMATORS.names()) == {*SKLEARN_MODELS, *MLLIB_MODELS, "cnn", "cnn_resnet", "vote"}
    assert model_kind("cnn_resnet") == "cnn" and model_kind("vote") == "vote"
    assert model_kind("sk_rf") == "sklearn" and model_kind("mllib_gbt") == "mllib"
    with pytest.raises(
        ModelConfigError, match=r"unknown model 'sk_magic'; choose from sk_logreg, .*mllib_mlp"
    ):
        model_kind("sk_magic")
    est = build_sklearn("sk_logreg", {"C": 0.5})
    assert est.get_params()["clf__C"] == 0.5


def test_stages_drive_the_parser_the_pipeline_and_the_jobs() -> None:
    from medimg_spark.cli import build_parser
    from medimg_spark.pipeline import STAGES as PIPELINE_STAGES

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(STAGES.names())
    assert (
        PIPELINE_STAGES
        == pipeline_stages()
        == (
            "ingest",
            "preprocess",
            "volumes",
            "quality",
            "features",
            "train",
            "predict",
            "evaluate",
            "localize",
            "recognize",
            "report",
        )
    )
    helps = {a.dest: a.help for a in sub._choices_actions}
    for stage in STAGES.entries():
        spec = stage.load()
        assert helps[spec.name] == spec.help
        assert (ROOT / spec.job_file).is_file(), spec.job_file
        verb = "run" if spec.job_file == "jobs/pipeline.py" else spec.name
        assert f'run_job("{verb}")' in (ROOT / spec.job_file).read_text()
    assert {p.stem for p in (ROOT / "jobs").glob("*.py")} == {
        s.load().job or s.name for s in STAGES.entries()
    }
    train = sub.choices["train"]
    model = next(a for a in train._actions if a.dest == "model")
    assert tuple(model.choices) == ESTIMATORS.names()


def test_pipeline_rejects_a_stage_that_is_not_registered(tmp_path: Path) -> None:
    """``deid`` is a registered verb but not a pipeline stage: the config fails when it is loaded."""
    from medimg_spark.config import parse_config
    from medimg_spark.stages import pipeline_stages

    with pytest.raises(
        ConfigError, match=r"pipeline\.stages: .*unknown stage\(s\) \['deid'\]; choose from"
    ) as err:
        parse_config({"pipeline": {"stages": ["ingest", "deid"]}}, "t.yaml")
    assert str(list(pipeline_stages())) in str(err.value)
