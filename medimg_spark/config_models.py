"""The typed sections of a medimg config file, one pydantic model per stage.

This module imports only pydantic and light medimg modules (no pyspark, OpenCV, scikit-learn,
pandas or pydicom), so :mod:`medimg_spark.config` can validate a whole file before Spark starts.
The stage modules re-export their models from here (``medimg_spark.ml.TrainConfig``,
``medimg_spark.privacy.DeidConfig``, ``medimg_spark.pipeline.PipelineConfig``...).

Precedence, everywhere: a command-line flag > the stage's section > the model's default. In
``medimg run`` the ``pipeline`` section's per-run keys (``pipeline.recipes[i].where``,
``pipeline.features.*``, ``pipeline.models[i].train.*``) win over the stage sections, which
supply the defaults of every run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medimg_spark.errors import ConfigError
from medimg_spark.stages import pipeline_stages
from medimg_spark.storage import basename
from medimg_spark.volumes.ops import VolumeFilterStep
from medimg_spark.volumes.regions import VolumeLocalizeConfig


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


Source = Literal["images", "processed"]

# ----------------------------------------------------------------------------- privacy

DEFAULT_TEXT_PRONE_MODALITIES: tuple[str, ...] = ("US", "SC", "OT", "XC", "ES")
#: SOP Class UID prefixes of Secondary Capture and Ultrasound storage (screens and scanners
#: that routinely burn text into the pixels).
DEFAULT_TEXT_PRONE_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture (and its multi-frame variants .7.x)
    "1.2.840.10008.5.1.4.1.1.6.",  # Ultrasound Image / Enhanced US Volume
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image
)

#: Option field -> column of Table E.1-1.
OPTION_COLUMN_OF: dict[str, str] = {
    "retain_safe_private": "rtnSafePrivOpt",
    "retain_uids": "rtnUIDsOpt",
    "retain_device_identity": "rtnDevIdOpt",
    "retain_institution_identity": "rtnInstIdOpt",
    "retain_patient_characteristics": "rtnPatCharsOpt",
    "retain_longitudinal_full_dates": "rtnLongFullDatesOpt",
    "retain_longitudinal_modified_dates": "rtnLongModifDatesOpt",
    "clean_descriptors": "cleanDescOpt",
    "clean_structured_content": "cleanStructContOpt",
    "clean_graphics": "cleanGraphOpt",
}


#: ``--option`` names of ``medimg deid`` / ``medimg ingest`` (and the data sources' ``deid_options``) →
#: the :class:`DeidConfig` flag each switches on.
DEID_OPTIONS: dict[str, str] = {
    "retain-longitudinal-modified-dates": "retain_longitudinal_modified_dates",
    "retain-longitudinal-full-dates": "retain_longitudinal_full_dates",
    "retain-patient-characteristics": "retain_patient_characteristics",
    "retain-device-identity": "retain_device_identity",
    "retain-institution-identity": "retain_institution_identity",
    "retain-uids": "retain_uids",
    "clean-descriptors": "clean_descriptors",
    "clean-structured-content": "clean_structured_content",
    "clean-graphics": "clean_graphics",
    "retain-safe-private": "retain_safe_private",
}


class DeidConfig(BaseModel):
    """What the de-identification does (PS3.15 Annex E basic profile plus selected options).

    The ``privacy`` section; read by ``medimg ingest``, ``medimg deid`` and ``medimg run``.

    Attributes:
        retain_longitudinal_modified_dates: Shift dates by one whole-day offset per patient
            (derived from the key, so consistent across studies and runs); times are kept.
        retain_longitudinal_full_dates: Keep dates and times unchanged (exclusive with the above).
        retain_patient_characteristics: Keep sex, age, size, weight, etc.
        retain_device_identity: Keep device serial numbers, station names, etc.
        retain_institution_identity: Keep institution name, address, department.
        retain_uids: Keep the original UIDs instead of replacing them.
        clean_descriptors: Keep descriptions and comments after scrubbing identifiers from them.
        clean_structured_content: Keep SR content / acquisition context with scrubbed text.
        clean_graphics: Keep overlays, curves and graphic annotations (text scrubbed).
        retain_safe_private: Keep the reviewed safe private attributes (numeric acquisition
            parameters of PS3.15 Table E.3.10-1, listed in the packaged
            ``resources/privacy/safe_private.yaml``); all other private attributes are removed.
        safe_private: YAML file replacing the packaged safe private list (same format); used
            with ``retain_safe_private``.
        clean_pixel_data: Apply the burned-in text rules (and OCR, see ``ocr``).
        pixel_rules: YAML file of pixel rules; ``None`` uses the packaged default rules.
        ocr: Burned-in text found by Tesseract OCR and blanked. ``"auto"`` (default) uses it when
            the ``tesseract`` binary is installed; ``"on"`` requires it (a config error without
            it); ``"off"`` never runs it. With OCR, a text-prone image that no rule matches is
            read, every text box is blanked, and a second OCR pass over the blanked pixels must
            find no text, else the file is quarantined (``ResidualTextError``); rule-matched
            images get their rule regions plus the OCR boxes and the same verification.
            Without OCR a text-prone image that no rule matches is quarantined
            (``BurnedInAnnotationError``) unless ``allow_burned_in``.
        text_prone_modalities: Modalities whose pixels are presumed to carry text.
        text_prone_sop_classes: SOP Class UID prefixes presumed to carry text.
        keep: Keywords or tags of attributes outside Table E.1-1 to keep in addition to the
            allow-list (attributes of the table are governed by the options instead).
        attribute_types: IOD type (1, 2 or 3) per keyword, overriding the built-in types used
            to resolve compound action codes.
        retain_uid_references: Resolve ``X/Z/U*`` sequences (Referenced Image, Source Image) to
            U so references keep resolving; ``False`` resolves them strictly by type.
        max_date_shift_days: Upper bound of the per-patient date shift (days into the past).
        vault_key_file: Master-key file of the re-identification vault (a path, not a key);
            ``$MEDIMG_VAULT_KEY_FILE`` is used when unset.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    retain_longitudinal_modified_dates: bool = Field(False, description="One date shift per patient.")
    retain_longitudinal_full_dates: bool = Field(False, description="Keep dates and times unchanged.")
    retain_patient_characteristics: bool = Field(False, description="Keep sex, age, size, weight.")
    retain_device_identity: bool = Field(False, description="Keep device serial numbers, station names.")
    retain_institution_identity: bool = Field(False, description="Keep institution name and address.")
    retain_uids: bool = Field(False, description="Keep the original UIDs.")
    clean_descriptors: bool = Field(False, description="Keep descriptions with identifiers scrubbed.")
    clean_structured_content: bool = Field(False, description="Keep SR content with scrubbed text.")
    clean_graphics: bool = Field(False, description="Keep overlays and annotations (text scrubbed).")
    retain_safe_private: bool = Field(False, description="Keep safe private attributes; others removed.")
    safe_private: str | None = Field(None, description="Safe private list YAML (null: the packaged list).")
    clean_pixel_data: bool = Field(True, description="Apply the burned-in text rules (and OCR).")
    pixel_rules: str | None = Field(None, description="Pixel rules YAML (null: the packaged rules).")
    ocr: Literal["off", "auto", "on"] = Field(
        "auto", description="Tesseract OCR redaction of burned-in text: auto | on | off."
    )
    text_prone_modalities: tuple[str, ...] = Field(
        DEFAULT_TEXT_PRONE_MODALITIES, description="Modalities presumed to carry burned-in text."
    )
    text_prone_sop_classes: tuple[str, ...] = Field(
        DEFAULT_TEXT_PRONE_SOP_CLASSES, description="SOP Class UID prefixes presumed to carry text."
    )
    keep: tuple[str, ...] = Field((), description="Keywords/tags outside Table E.1-1 to keep.")
    attribute_types: dict[str, Literal[1, 2, 3]] = Field(
        default_factory=dict, description="IOD type per keyword (resolves compound action codes)."
    )
    retain_uid_references: bool = Field(True, description="Keep reference sequences resolvable.")
    max_date_shift_days: int = Field(default=3650, ge=1, le=36500, description="Largest date shift.")
    vault_key_file: str | None = Field(None, description="Vault master-key file (a path, not a key).")

    @field_validator("keep")
    @classmethod
    def _check_keep(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            return value
        # pydicom and the profile table are loaded only when there is something to check
        from medimg_spark.privacy.config import resolve_attribute
        from medimg_spark.privacy.profile import load_profile

        profile = load_profile()
        for item in value:
            tag = resolve_attribute(item)
            entry = profile.lookup(tag)
            if entry is not None:
                raise ValueError(
                    f"keep: {item!r} is in the confidentiality profile table ({entry.name}, basic action "
                    f"{entry.basic}); use the matching retain_*/clean_* option instead of keep"
                )
        return value

    @field_validator("attribute_types")
    @classmethod
    def _check_types(cls, value: dict[str, int]) -> dict[str, int]:
        if not value:
            return value
        from pydicom.datadict import tag_for_keyword

        for keyword in value:
            if tag_for_keyword(keyword) is None:
                raise ValueError(f"attribute_types: {keyword!r} is not a DICOM keyword (e.g. 'StationName')")
        return value

    @model_validator(mode="after")
    def _exclusive_dates(self) -> DeidConfig:
        if self.retain_longitudinal_full_dates and self.retain_longitudinal_modified_dates:
            raise ValueError(
                "retain_longitudinal_full_dates and retain_longitudinal_modified_dates are exclusive; "
                "choose one"
            )
        return self

    @model_validator(mode="after")
    def _safe_private_needs_option(self) -> DeidConfig:
        if self.safe_private is not None and not self.retain_safe_private:
            raise ValueError(
                "safe_private names a safe private list but retain_safe_private is off; set "
                "retain_safe_private: true (--option retain-safe-private) or remove safe_private"
            )
        return self

    def enabled_option_fields(self) -> tuple[str, ...]:
        """Names of the enabled option fields that map to a column of Table E.1-1."""
        return tuple(name for name in OPTION_COLUMN_OF if getattr(self, name))

    def option_columns(self) -> frozenset[str]:
        """Table E.1-1 columns of the enabled options."""
        return frozenset(OPTION_COLUMN_OF[name] for name in self.enabled_option_fields())

    def keep_tags(self) -> frozenset[int]:
        """Tags of :attr:`keep`."""
        from medimg_spark.privacy.config import resolve_attribute

        return frozenset(resolve_attribute(k) for k in self.keep)


# ----------------------------------------------------------------------------- preprocess


class PreprocessConfig(StrictModel):
    """The ``preprocess`` section: the recipe run by ``medimg preprocess`` when no flag names one.

    ``medimg run``: used when ``pipeline.recipes`` is empty; ``where`` is also the filter of every
    ``pipeline.recipes`` entry without its own ``where``.
    """

    recipe: str | None = Field(
        None,
        description="Recipe YAML path or recipe name (./conf/recipes/ or shipped; the --recipe flag wins).",
    )
    where: str | None = Field(None, description="SQL filter on the images table (the --where flag wins).")


# ----------------------------------------------------------------------------- features


class FeaturesConfig(StrictModel):
    """The ``features`` section: what ``medimg features`` computes.

    ``medimg run``: keys given in ``pipeline.features`` win over these.
    """

    set: str = Field(
        "texture",
        description="Feature set name (./conf/features/ or shipped; `medimg features --help` lists them) or YAML path (--set wins).",
    )
    source: Source = Field("images", description="Table the features are computed from (--from wins).")
    use_mask: bool = Field(
        True, description="Pass the processed table's masks to the extractors (false: whole frames)."
    )
    recipe: str | None = Field(
        None,
        description="Processed source: the recipe (name or recipe_hash) whose frames are used "
        "(null: the only one in processed/; --recipe wins).",
    )


# ----------------------------------------------------------------------------- train

ThresholdRule = Literal["youden", "balanced_accuracy", "accuracy", "f1", "fixed"]
SearchMetric = Literal["roc_auc", "balanced_accuracy", "accuracy", "f1"]


class AugmentConfig(BaseModel):
    """How many augmented copies of each training frame to add, and how to perturb them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    copies: int = Field(2, ge=1, le=32, description="augmented copies of each training frame")
    max_shift: float = Field(2.0, ge=0, description="pixels, per axis, uniform in ±max_shift")
    max_rotation: float = Field(10.0, ge=0, le=180, description="degrees, uniform in ±max_rotation")
    max_scale: float = Field(0.07, ge=0, lt=1, description="zoom uniform in 1 ± max_scale")
    hflip: bool = Field(True, description="random horizontal flips")
    photometric: bool = Field(False, description="gamma/contrast/brightness jitter")
    seed: int = Field(0, description="random seed of the perturbations")
    source: Source = Field("images", description="table whose frames are augmented")


class ThresholdConfig(BaseModel):
    """How the binary decision threshold is chosen on the val split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: ThresholdRule = Field("youden", description="criterion maximised on val ('fixed': use value)")
    value: float = Field(0.5, description="the threshold when rule is 'fixed'")


class CnnConfig(BaseModel):
    """Hyper-parameters of the JAX CNN estimators ``cnn`` / ``cnn_resnet`` (the ``train.cnn`` section).

    Every key is also accepted in ``train.params`` and ``train.grid`` for a CNN model (params win
    over this section; a grid is searched on val).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: Literal["cnn", "resnet"] | None = Field(
        None, description="network: VGG-style 'cnn' or residual 'resnet' (default: from the model name)"
    )
    source: Source = Field("images", description="table the frames are read from")
    recipe: str | None = Field(
        None, description="processed source: the recipe_name whose rows are used (needed when several)"
    )
    input_size: int = Field(28, ge=8, le=512, description="frames are resized to input_size² (INTER_AREA)")
    normalisation: Literal["zscore", "percentile"] = Field(
        "zscore", description="per-frame scaling: z-score, or robust 1st–99th percentile to [-1, 1]"
    )
    widths: list[int] = Field(
        [32, 64, 128], min_length=1, max_length=6, description="channels of each stage (one per stage)"
    )
    blocks: int = Field(1, ge=1, le=8, description="residual blocks per stage (resnet)")
    groups: int = Field(8, ge=1, description="GroupNorm groups (clipped to the channel count)")
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout before the dense layer")
    epochs: int = Field(30, ge=1, le=1000, description="maximum training epochs")
    batch_size: int = Field(64, ge=2, le=4096, description="training batch size")
    lr: float = Field(2e-3, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(1e-4, ge=0, description="decoupled weight decay (AdamW)")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up before the cosine decay")
    patience: int = Field(8, ge=1, description="stop after this many epochs without a better val score")
    monitor: Literal["auto", "roc_auc", "loss"] = Field(
        "auto", description="early-stopping score on val (auto: ROC AUC for 2 classes, loss otherwise)"
    )
    class_weight: Literal["balanced", "none"] | None = Field(
        None, description="loss class weights (default: train.class_weight)"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the cross-entropy")
    augment: AugmentConfig | None = Field(
        None, description="fresh augmentation of every training frame each epoch (copies ignored)"
    )
    tta: bool = Field(
        False, description="test-time augmentation: average with the horizontally flipped frame"
    )
    calibrate: bool = Field(True, description="fit a temperature on val (calibrated probabilities)")
    seed: int | None = Field(None, description="weights/shuffle/dropout seed (default: train.seed)")
    max_train_images: int = Field(
        200_000, ge=1, description="refuse to collect more training frames than this to the driver"
    )
    predict_batch: int = Field(256, ge=1, le=8192, description="frames per forward pass at inference")

    @field_validator("widths")
    @classmethod
    def _positive_widths(cls, v: list[int]) -> list[int]:
        if any(w < 1 or w > 1024 for w in v):
            raise ValueError(f"widths must be channel counts in 1..1024, got {v}")
        return v


class VoteMember(BaseModel):
    """One member of a ``vote`` ensemble: a saved model (folder, or name under ``out_dir/models``) and its weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: str | None = Field(None, description="saved model folder (local path or URI)")
    name: str | None = Field(None, description="a model saved under out_dir/models/<name>")
    weight: float = Field(1.0, gt=0, description="weight of its probabilities in the average")

    @model_validator(mode="after")
    def _one_source(self) -> VoteMember:
        if (self.model_path is None) == (self.name is None):
            raise ValueError("a vote member needs exactly one of model_path and name")
        return self


class VoteParams(BaseModel):
    """``train.params`` of the ``vote`` model: the members whose calibrated probabilities are averaged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    members: list[VoteMember] = Field(min_length=2, description="saved models of any kind (≥ 2)")


class TrainConfig(BaseModel):
    """Options of training (the ``train`` section; YAML mapping; unknown keys are rejected).

    ``medimg run``: keys given in ``pipeline.models[i].train`` (or the experiment file) win over
    these; ``model_dir`` and ``name`` always come from ``pipeline.models[i].name`` there.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    features_dir: str = Field("features", description="table under out_dir holding the feature vectors")
    train_split: str = Field("train", description="split the model is fitted on")
    val_split: str | None = Field("val", description="split of the grid search and threshold (null: none)")
    class_weight: Literal["balanced", "none"] = Field("balanced", description="class weights")
    params: dict[str, Any] = Field({}, description="estimator hyper-parameters")
    grid: dict[str, list[Any]] = Field({}, description="hyper-parameter values searched on val")
    search_metric: SearchMetric = Field("roc_auc", description="grid search criterion on val")
    threshold: ThresholdConfig = Field(ThresholdConfig(), description="binary decision threshold")
    positive_label: str | None = Field(
        None, description="positive class of a binary task (default: the last class in sorted order)"
    )
    augment: AugmentConfig | None = Field(None, description="augmented training copies (null: none)")
    feature_set: str | None = Field(None, description="feature set for augmentation (default: recorded one)")
    cnn: CnnConfig | None = Field(None, description="CNN settings of the cnn / cnn_resnet models")
    seed: int = Field(0, description="random seed of the estimator")
    model_dir: str | None = Field(None, description="where to save (default out_dir/models/<name>)")
    name: str | None = Field(
        None,
        description="model name in the card, predictions and metrics files "
        "(default: the model_dir folder name, else the registry model name)",
    )

    def display_name(self, model_name: str) -> str:
        """The name recorded for a model trained with this config."""
        if self.name:
            return self.name
        return basename(self.model_dir) if self.model_dir else model_name


# ----------------------------------------------------------------------------- localize

FrameMethod = Literal["kmeans", "dbscan", "gmm", "lungs"]
DatasetMethod = Literal["mllib_kmeans", "mllib_gmm"]
LocalizeMethod = Literal[FrameMethod, DatasetMethod]
#: Per-frame region methods and dataset-level cluster methods (the CLI's and the config's choices).
FRAME_METHODS: tuple[str, ...] = get_args(FrameMethod)
DATASET_METHODS: tuple[str, ...] = get_args(DatasetMethod)


class LocalizeConfig(BaseModel):
    """Options of localisation (the ``localize`` section; unknown keys are rejected).

    Read by ``medimg localize`` and by every method of ``pipeline.localize`` in ``medimg run``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Source = Field("processed", description="table whose frames are localised (per-frame methods)")
    foreground: Literal["mask", "otsu_bright", "otsu_dark"] = Field(
        "mask", description="'mask' uses the frame mask when present and falls back to otsu_bright"
    )
    k: int = Field(2, ge=1, le=64, description="clusters for kmeans / gmm / MLlib methods")
    eps: float = Field(1.5, gt=0, description="DBSCAN neighbourhood radius in pixels")
    min_samples: int = Field(4, ge=1, description="DBSCAN core-point neighbours")
    intensity_weight: float = Field(0.0, ge=0, description="weight of intensity (0..1 scaled) vs position")
    min_area: int = Field(1, ge=1, description="drop clusters with fewer pixels")
    max_points: int = Field(
        20000,
        ge=10,
        description="foreground pixels clustered per frame: beyond it the frame is downsampled "
        "(boxes are given in full-resolution coordinates)",
    )
    max_side: int = Field(1024, ge=16, description="frames with a longer side are downsampled first")
    max_downsample: int = Field(
        32, ge=1, description="largest downsampling factor; a frame needing more is quarantined"
    )
    lung_work_side: int = Field(
        128, ge=16, le=1024, description="lungs: the frame's longer side is resized to this first"
    )
    seed: int = Field(0, description="random seed of the clusterings")
    features_dir: str = Field("features", description="feature table of the MLlib methods")


# ----------------------------------------------------------------------------- recognize

SuperpixelMethod = Literal["slic", "quickshift"]
Aggregate = Literal["max", "noisy_or", "top_k_mean"]


class SuperpixelConfig(BaseModel):
    """Superpixels of the working-size frame (``skimage.segmentation.slic`` or ``quickshift``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: SuperpixelMethod = Field("slic", description="slic | quickshift")
    n_segments: int = Field(48, ge=2, le=10000, description="SLIC: approximate number of superpixels")
    compactness: float = Field(0.1, gt=0, description="SLIC: colour vs space balance (grey frames: ~0.1)")
    sigma: float = Field(0.5, ge=0, description="Gaussian smoothing before segmentation (both methods)")
    kernel_size: float = Field(3.0, gt=0, description="quickshift: density kernel width")
    max_dist: float = Field(6.0, gt=0, description="quickshift: cut-off of the tree links")
    ratio: float = Field(0.5, ge=0, le=1, description="quickshift: colour vs space balance")


class RecognizeConfig(BaseModel):
    """Options of region-level recognition (the ``recognize`` section; unknown keys are rejected).

    Read by ``medimg recognize`` and by every ``pipeline.recognize`` entry of ``medimg run`` (whose
    ``options`` win over these keys).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Source = Field("images", description="table whose frames are recognised (--from wins)")
    name: str = Field("regions", min_length=1, description="model name: DIR/models/<name> (--name wins)")
    max_side: int = Field(128, ge=16, le=1024, description="frames larger than this are downsampled first")
    min_side: int = Field(64, ge=8, le=1024, description="frames smaller than this are upsampled first")
    equalize: bool = Field(True, description="histogram-equalise the working-size frame")
    superpixels: SuperpixelConfig = Field(SuperpixelConfig(), description="how frames are cut into regions")
    min_region_pixels: int = Field(4, ge=1, description="smaller superpixels join no region (dropped)")
    glcm_levels: int = Field(16, ge=2, le=256, description="grey levels of the per-region GLCM")
    region_labels: Literal["mil", "mask"] = Field(
        "mil",
        description="'mil': multiple-instance labels from image labels; 'mask': regions of a labelled "
        "image overlapping its mask (processed table) take the image label, the others the negative class",
    )
    mask_overlap: float = Field(0.5, gt=0, le=1, description="'mask' labels: overlap fraction needed")
    mil_rounds: int = Field(3, ge=0, le=20, description="re-labelling rounds after the initial fit")
    top_fraction: float = Field(
        0.5, gt=0, le=1, description="share of a positive image's regions kept positive in each round"
    )
    aggregate: Aggregate | Literal["auto"] = Field(
        "auto", description="image score from region scores; 'auto' chooses on val (ROC AUC)"
    )
    top_k: int = Field(3, ge=1, description="regions averaged by the top_k_mean aggregate")
    C: float = Field(1.0, gt=0, description="inverse L2 strength of the softmax (logistic) regression")
    max_iter: int = Field(500, ge=10, description="solver iterations of each fit")
    negative_label: str | None = Field(
        None, description="class of background regions (default: the first class in sorted order)"
    )
    class_weight: Literal["balanced", "none"] = Field("balanced", description="region class weights")
    threshold: ThresholdConfig = Field(ThresholdConfig(), description="binary decision threshold on val")
    train_split: str = Field("train", description="split the region model is fitted on")
    val_split: str | None = Field("val", description="split of the aggregate choice and threshold")
    max_train_regions: int = Field(
        400000, ge=100, description="region rows collected to the driver for fitting (a bound)"
    )
    seed: int = Field(0, description="random seed (superpixels, subsampling, solver)")


# ----------------------------------------------------------------------------- report


class ReportConfig(StrictModel):
    """The ``report`` section: what ``medimg report`` (and the pipeline's report stage) shows."""

    title: str = Field("medimg-spark report", min_length=1, description="Page title and heading.")
    thumbs_per_recipe: int = Field(4, ge=1, le=64, description="Before/after frames shown per recipe.")
    max_recipes: int = Field(12, ge=1, le=200, description="Recipes shown in the thumbnails section.")
    region_frames: int = Field(4, ge=1, le=64, description="Frames drawn with their localised regions.")
    hist_sample: int = Field(2000, ge=10, description="Frames sampled per quality histogram.")
    max_table_rows: int = Field(200, ge=1, description="Rows shown in one table.")


# ----------------------------------------------------------------------------- volumes


class VolumesConfig(StrictModel):
    """The ``volumes`` section: series → 3-D volume assembly (``medimg volumes``)."""

    source: Source = Field("images", description="Table whose frames are assembled (the --table flag wins).")
    recipe: str | None = Field(
        None,
        description="source processed: the recipe (name or recipe_hash) whose frames are used "
        "(the --recipe flag wins; default: the only recipe in processed/).",
    )
    min_slices: int = Field(2, ge=2, description="Fewer distinct slices than this are not a volume.")
    max_volume_bytes: int = Field(
        128 << 20,
        ge=1,
        description="Largest series (stored pixel bytes, from metadata) assembled in one task; larger "
        "ones are quarantined unread (VolumeTooLargeError). A volume is one Parquet cell: the JVM holds "
        "a few copies of it (measured with the shipped defaults, spark.driver.memory 2g in local mode: "
        "120 MB assembles, 240 MB exhausts the heap), so raise it with the driver/executor memory.",
    )
    orientation_tolerance: float = Field(
        1e-4, gt=0, lt=1, description="Largest difference of a direction cosine within one volume."
    )
    spacing_tolerance: float = Field(
        0.05,
        gt=0,
        description="Largest relative deviation of a slice gap from the typical gap before "
        "irregular_spacing (whole multiples count as missing slices).",
    )
    filters: list[VolumeFilterStep] = Field(
        default_factory=list,
        description="3-D filters applied in order to every new volume → processed_volumes (plus "
        "volume_quality before/after), e.g. [{op: gaussian, sigma_mm: 1.0}, {op: median, size: 3}]; "
        "ops: gaussian (sigma_mm), median and mean (size in voxels or radius_mm).",
    )
    localize: VolumeLocalizeConfig | None = Field(
        None,
        description="3-D connected components of every volume (of processed_volumes when filters are set) "
        "→ volume_labels (label maps) and volume_regions (size in mm³, LPS centroid and box), e.g. "
        "{threshold: otsu, min_volume_mm3: 10}.",
    )


# ----------------------------------------------------------------------------- pipeline

#: Stages in pipeline order; each reads only tables written by the stages before it.
#: Stages in pipeline order (the ``pipeline=True`` entries of :data:`medimg_spark.stages.STAGES`);
#: each reads only tables written by the stages before it.
STAGES: tuple[str, ...] = pipeline_stages()
#: Pipeline stages that run only when ``pipeline.stages`` lists them.
OPT_IN_STAGES: tuple[str, ...] = ("volumes",)


class RecipeRun(StrictModel):
    """One recipe applied by the preprocess stage."""

    recipe: str = Field(
        description="Recipe YAML path, or a recipe name (./conf/recipes/ or shipped; `medimg preprocess --help` lists them)."
    )
    where: str | None = Field(None, description="SQL filter on the images table (default: preprocess.where).")


class FeaturesRun(StrictModel):
    """The feature set computed by the features stage; keys set here win over the features section."""

    source: Source | None = Field(
        None, description="Table the features are computed from (null: features.source)."
    )
    set: str | None = Field(None, description="Feature set name or YAML path (null: features.set).")
    recipe: str | None = Field(
        None,
        description="Processed source: recipe name or hash (null: features.recipe, else the pipeline's only recipe).",
    )


class ModelRun(StrictModel):
    """One model trained (or, without the train stage, loaded) by the pipeline.

    Either ``model`` (+ ``train``) or ``experiment``: the shipped model of an experiment file such as
    ``conf/pneumonia.yaml`` (its estimator and training options, so they are written down once).
    """

    name: str = Field(description="Saved under DIR/models/<name>; names the metrics files.")
    model: str | None = Field(
        None, description="Estimator: sk_svc, sk_rf, sk_hgb, sk_logreg, sk_ensemble, mllib_*, cnn, vote."
    )
    train: dict[str, Any] = Field(
        default_factory=dict, description="Training options (TrainConfig); they win over the train section."
    )
    experiment: str | None = Field(None, description="Experiment YAML whose shipped model to use.")

    def resolved(self, base: Path) -> tuple[str, dict[str, Any]]:
        """``(estimator, train options)``, from the experiment file when one is named."""
        if self.experiment is None:
            if self.model is None:
                raise ConfigError(f"pipeline.models[{self.name}]: set 'model' or 'experiment'")
            return self.model, dict(self.train)
        if self.model is not None or self.train:
            raise ConfigError(
                f"pipeline.models[{self.name}]: 'experiment' replaces 'model' and 'train'; drop them"
            )
        from medimg_spark.ml.experiment import load_experiment

        path = Path(self.experiment)
        exp = load_experiment(path if path.is_absolute() else base / path)
        return exp.shipped.model, exp.shipped.train.model_dump(exclude_unset=True)

    def runs(self, base: Path) -> list[tuple[str, str, dict[str, Any]]]:
        """``(name, estimator, train options)`` of every model this entry trains, in order.

        An experiment whose shipped model is an ensemble of other models (``members``, e.g. a
        ``vote`` of a CNN and an SVC ensemble) trains those first, under their own names.
        """
        estimator, options = self.resolved(base)
        if self.experiment is None:
            return [(self.name, estimator, options)]
        from medimg_spark.ml.experiment import load_experiment

        path = Path(self.experiment)
        exp = load_experiment(path if path.is_absolute() else base / path)
        members = [(m.label, m.model, m.train.model_dump(exclude_unset=True)) for m in exp.members]
        return [*members, (self.name, estimator, options)]


class LocalizeRun(StrictModel):
    """One localize method of the pipeline with its own options (they win over the localize section)."""

    method: LocalizeMethod = Field(description="kmeans | dbscan | gmm | lungs | mllib_kmeans | mllib_gmm.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="LocalizeConfig keys for this method only (e.g. {k: 3})."
    )


class RecognizeRun(StrictModel):
    """One region-level model of the recognize stage; ``options`` win over the ``recognize`` section."""

    name: str = Field(min_length=1, description="Saved under DIR/models/<name>; its predictions partition.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="RecognizeConfig keys for this model (e.g. superpixels, aggregate)."
    )


class PipelineConfig(StrictModel):
    """The ``pipeline`` section: what ``medimg run`` runs, in order."""

    out: str | None = Field(None, description="Output directory (the --out flag overrides it).")
    inputs: list[str] = Field(
        default_factory=list, description="Files/folders; 'pkg:MODULE/SUBDIR' = package data."
    )
    labels: str | None = Field(None, description="CSV: path (or file_sha256), label[, split].")
    stages: list[str] = Field(
        default_factory=lambda: [s for s in STAGES if s not in OPT_IN_STAGES],
        description="Stages to run, in order (default: all but " + ", ".join(OPT_IN_STAGES) + ").",
    )
    recipes: list[RecipeRun] = Field(
        default_factory=list, description="Recipes of the preprocess stage (default: preprocess.recipe)."
    )
    features: FeaturesRun = Field(
        default_factory=FeaturesRun, description="Feature set (keys set here win over the features section)."
    )
    models: list[ModelRun] = Field(
        default_factory=list, description="Models of the train/predict/evaluate stages."
    )
    evaluate_splits: list[str] = Field(default_factory=lambda: ["val"], description="Splits evaluated.")
    predict_split: str | None = Field(None, description="Split the predict stage scores (default: all rows).")
    localize: list[LocalizeMethod | LocalizeRun] = Field(
        default_factory=list,
        description="Localize methods: a name (options: the localize section) or "
        "{method, options} (its options win over the localize section).",
    )
    recognize: list[RecognizeRun] = Field(
        default_factory=list, description="Region-level models of the recognize stage (options: recognize)."
    )

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, value: list[str]) -> list[str]:
        unknown = [s for s in value if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
        return value
