"""YAML configuration validated into typed pydantic models before Spark starts.

A config file has one section per stage; every section is optional and every model forbids
unknown keys, so a typo in any section fails at once (exit code 2) with a message naming the
dotted key, the file and the fix. The stage sections' models live in
:mod:`medimg_spark.config_models` (no pyspark or other heavy import); each stage reads its own
section, a command-line flag winning over it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from medimg_spark.config_models import (
    DEID_OPTIONS,
    DeidConfig,
    FeaturesConfig,
    LocalizeConfig,
    PipelineConfig,
    PreprocessConfig,
    RecognizeConfig,
    ReportConfig,
    StrictModel,
    TrainConfig,
    VolumesConfig,
)
from medimg_spark.errors import ConfigError

#: Spark's binaryFile source cannot read files larger than this (Int.MaxValue bytes).
BINARY_FILE_LIMIT = 2**31 - 1


SplitBy = Literal["file", "parent", "series", "study", "from_path"]
#: ``ingest.split.by`` choices (the ``--split-by`` flag's too).
SPLIT_BY: tuple[str, ...] = get_args(SplitBy)
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SplitRule(StrictModel):
    """How ingest assigns a split to frames that carry none (``ingest.split``).

    Deterministic: a frame's split is a hash of its group key (and ``seed``) mapped onto
    ``fractions`` in the order written, so the same file always lands in the same split and every
    frame of a group sits in one split. The group key by ``by``:

    * ``file`` — the file's SHA-256 (all frames of one file together; the default);
    * ``parent`` — the name of the file's folder (e.g. one folder per patient);
    * ``series`` / ``study`` — the DICOM Series / Study Instance UID as written to the tables (the
      pseudonymised UID when de-identifying: stable for one key; an ``--ephemeral-key`` changes it),
      the file's SHA-256 when the file has none;
    * ``from_path`` — no hash: the nearest folder of the file's path named like a split (a key of
      ``fractions``, e.g. ``data/train/CT/a.dcm`` → train); frames of files under no such folder keep
      no split.

    A split given by ``--labels`` or by the file itself (a MedMNIST ``.npz``) is kept.
    """

    by: SplitBy = Field("file", description="Group key: file | parent | series | study | from_path.")
    fractions: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15},
        description="Split name → share of the groups (sums to 1; from_path: only the names count).",
    )
    seed: int = Field(0, description="Seed of the hash (another seed, another assignment).")

    @field_validator("fractions")
    @classmethod
    def _check_fractions(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("fractions is empty; give e.g. {train: 0.7, val: 0.15, test: 0.15}")
        bad = [k for k in value if not _SPLIT_NAME.match(k)]
        if bad:
            raise ValueError(f"split names {bad} must be letters, digits, '_', '-' or '.'")
        neg = {k: v for k, v in value.items() if not 0 < v <= 1}
        if neg:
            raise ValueError(f"fractions {neg} must be in (0, 1]")
        total = sum(value.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"fractions sum to {total:g}; make them sum to 1")
        return value


class IngestConfig(StrictModel):
    """Options of the ingest stage."""

    default_modality: str = Field(
        "OT", min_length=1, max_length=16, description="Modality of non-DICOM files."
    )
    max_file_bytes: int = Field(
        BINARY_FILE_LIMIT, ge=1, le=BINARY_FILE_LIMIT, description="Larger files are quarantined unread."
    )
    max_decompressed_bytes: int = Field(
        1 << 30, ge=1, description="Limit for gzip-wrapped files and the inflated members of .npz archives."
    )
    max_decoded_bytes: int = Field(
        512 << 20,
        ge=1 << 20,
        description=(
            "Refuse, before decoding, a file whose pixels would take more memory than this "
            "(rows x cols x frames x bytes per sample from its header). The default suits a 2 GB Python "
            "worker, which holds the file's bytes, the decoded array and one output batch at once."
        ),
    )
    max_seconds_per_file: float | None = Field(
        300.0,
        gt=0,
        description="Time budget of one file's parse and decode (null: none); over it the file is quarantined.",
    )
    label_from_parent_dir: bool = Field(False, description="Label = name of the file's parent folder.")
    split: SplitRule | None = Field(
        None,
        description="Assign a split to frames without one: {by: file|parent|series|study|from_path, "
        "fractions: {train: .7, val: .15, test: .15}, seed: 0} (null: none; --split-by sets `by`).",
    )
    output_batch_bytes: int = Field(
        32 << 20, ge=1 << 20, description="Arrow batches from the decoder are flushed at this many bytes."
    )
    max_files_per_trigger: int | None = Field(
        None, ge=1, description="Incremental ingest: at most this many files per micro-batch."
    )
    files_per_partition: int | None = Field(
        None, ge=1, description="Repartition the file list so each task decodes at most this many files."
    )

    @model_validator(mode="after")
    def _split_not_by_label_folder(self) -> IngestConfig:
        if self.label_from_parent_dir and self.split is not None and self.split.by == "parent":
            raise ValueError(
                "split.by 'parent' with label_from_parent_dir would put each label's folder, so each "
                "class, into one split; use split.by file (or series) instead"
            )
        return self


class SparkSection(StrictModel):
    """Spark settings: ``master`` and any ``spark.*`` key of the session."""

    master: str | None = Field(None, description="Spark master URL (--master wins; null: local[*]).")
    app_name: str = Field("medimg-spark", description="Application name.")
    conf: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Any spark.* key (over the spark-defaults file)."
    )


class MedimgConfig(StrictModel):
    """The whole configuration file: one typed section per stage, each read by that stage."""

    spark: SparkSection = Field(default_factory=SparkSection, description="The Spark session (every verb).")
    ingest: IngestConfig = Field(
        default_factory=IngestConfig,
        description="Read by `medimg ingest` and the ingest stage of `medimg run`.",
    )
    privacy: DeidConfig = Field(
        default_factory=DeidConfig,
        description="De-identification: read by `medimg ingest`, `medimg deid` and `medimg run`.",
    )
    preprocess: PreprocessConfig = Field(
        default_factory=PreprocessConfig,
        description="Read by `medimg preprocess` and the preprocess stage of `medimg run`.",
    )
    volumes: VolumesConfig = Field(
        default_factory=VolumesConfig,
        description="Read by `medimg volumes` and the volumes stage of `medimg run`.",
    )
    features: FeaturesConfig = Field(
        default_factory=FeaturesConfig,
        description="Read by `medimg features` and the features stage of `medimg run`.",
    )
    train: TrainConfig = Field(
        default_factory=TrainConfig, description="Read by `medimg train` and the train stage of `medimg run`."
    )
    localize: LocalizeConfig = Field(
        default_factory=LocalizeConfig,
        description="Read by `medimg localize` and the localize stage of `medimg run`.",
    )
    recognize: RecognizeConfig = Field(
        default_factory=RecognizeConfig,
        description="Read by `medimg recognize` and the recognize stage of `medimg run`.",
    )
    report: ReportConfig = Field(
        default_factory=ReportConfig,
        description="Read by `medimg report` and the report stage of `medimg run`.",
    )
    pipeline: PipelineConfig = Field(
        default_factory=PipelineConfig, description="Read by `medimg run`: which stages run, on what."
    )


def format_validation_errors(err: ValidationError, source: str, what: str = "configuration") -> str:
    """One line per pydantic error: where, what is wrong and the fix (shared by configs and policies)."""
    lines = [f"invalid {what} in {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            hint = "remove it or fix its spelling"
        elif e["type"] == "missing":
            hint = "add it"
        elif e["type"] == "value_error" and what != "configuration":
            lines.append(f"  - {e['msg'].removeprefix('Value error, ')}")
            continue
        else:
            hint = "change the value"
        lines.append(f"  - {loc}: {e['msg']} ({hint})")
    return "\n".join(lines)


def parse_config(data: dict[str, Any] | None, source: str = "<config>") -> MedimgConfig:
    """Validate a config mapping.

    Raises:
        ConfigError: naming every bad key and how to fix it.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}")
    # a section written with only commented-out keys (``preprocess:``) is YAML null: its defaults
    data = {k: ({} if v is None and k in MedimgConfig.model_fields else v) for k, v in data.items()}
    try:
        return MedimgConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_errors(err, source)) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``.

    Raises:
        ConfigError: when the file is missing, is not YAML, or is not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{p} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None) -> MedimgConfig:
    """Load and validate a config file (``None`` gives the defaults)."""
    if path is None:
        return MedimgConfig()
    return parse_config(load_yaml(path), str(path))


def validate_section(model: type[BaseModel], data: Any, source: str) -> Any:
    """Validate one stage's section with that stage's model, raising :class:`ConfigError`."""
    try:
        return model.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(format_validation_errors(err, source)) from None


def deid_config(cfg: MedimgConfig, source: str, options: Sequence[str] = ()) -> DeidConfig:
    """The ``privacy`` section of a config as a DeidConfig, with ``--option`` flags switched on.

    Args:
        cfg: the loaded config.
        source: where it came from (named in errors).
        options: ``--option`` names (keys of :data:`~medimg_spark.config_models.DEID_OPTIONS`).

    Raises:
        ConfigError: an unknown option name, or an invalid combination of flags.
    """
    if not options:
        return cfg.privacy
    data = cfg.privacy.model_dump(exclude_unset=True)
    for opt in options:
        if opt not in DEID_OPTIONS:
            raise ConfigError(f"unknown --option {opt!r}; choose from {', '.join(DEID_OPTIONS)}")
        data[DEID_OPTIONS[opt]] = True
    result: DeidConfig = validate_section(DeidConfig, data, f"{source}: privacy")
    return result


def _type_name(tp: Any) -> str:
    """A short, readable name of a field's type (``str | None``, ``'a' | 'b'``, ``list[str]``)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _nested_model(tp: Any) -> type[BaseModel] | None:
    """The model inside ``Model``, ``Model | None`` or ``list[Model]``, if any (a union of several
    models, such as a discriminated list of steps, has none: its field description names them)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    found = {m for m in (_nested_model(arg) for arg in get_args(tp)) if m is not None}
    return found.pop() if len(found) == 1 else None


def _default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "see below"
    return "null" if value is None else json.dumps(value, default=str)


def _field_rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        desc = (info.description or "").replace("|", "\\|")
        default = _default_text(info).replace("|", "\\|")
        kind = _type_name(info.annotation).replace("|", "\\|")
        rows.append(f"| `{key}` | {kind} | `{default}` | {desc} |")
        nested = _nested_model(info.annotation)
        if nested is not None:
            many = get_origin(info.annotation) is list
            rows.extend(_field_rows(nested, f"{key}[]." if many else f"{key}."))
    return rows


def config_reference() -> str:
    """Markdown reference of every section and key of :class:`MedimgConfig` (the README's table)."""
    parts = []
    for section, info in MedimgConfig.model_fields.items():
        model = _nested_model(info.annotation)
        assert model is not None
        parts.append(f"`{section}:` {info.description}\n")
        parts.append("| key | type | default | meaning |\n| --- | --- | --- | --- |")
        parts.extend(_field_rows(model, f"{section}."))
        parts.append("")
    return "\n".join(parts)
