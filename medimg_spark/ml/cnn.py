"""A small convolutional network in pure JAX + optax (no Spark import): frame preparation, the nets, training.

Core of the ``cnn`` / ``cnn_resnet`` estimators (the Spark side is :mod:`medimg_spark.ml.cnn_spark`).

* :func:`prepare_frame`: grayscale → resize to ``input_size``² (``cv2.INTER_AREA``) → per-frame
  normalisation (z-score, or the 1st–99th percentile range mapped to [-1, 1]); numpy/OpenCV only,
  so executors preparing frames need no JAX.
* The parameters are a flat ``dict[str, np.ndarray]`` (saved as ``weights.npz``); the nets use
  GroupNorm (stateless), so inference runs the same maths as training and there are no running stats.
* :func:`fit_cnn`: AdamW with a warm-up + cosine schedule, class weights, label smoothing, per-epoch
  host-side augmentation (:func:`medimg_spark.ml.augment.augment_image`), early stopping with
  best-epoch restore on val, temperature scaling fitted on val. Same seed → identical weights on CPU.
* :func:`predict_proba`: jit-compiled, batched; runs on a GPU when JAX sees one.

JAX is an optional dependency (``pip install medimg-spark[dl]``): this module imports it only
inside the functions that run the nets, and :func:`require_jax` raises :class:`CnnDependencyError`
when it is missing.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict

from medimg_spark.config_models import AugmentConfig, CnnConfig, TrainConfig
from medimg_spark.ml.errors import ModelConfigError, ModelDataError, ModelError

if TYPE_CHECKING:
    from types import ModuleType

__all__ = [
    "CnnConfig",
    "CnnDependencyError",
    "CnnFit",
    "CnnSpec",
    "EpochRecord",
    "fit_cnn",
    "fit_temperature",
    "init_params",
    "predict_logits",
    "predict_proba",
    "prepare_frame",
    "prepare_stack",
    "require_jax",
    "resolve_cnn_config",
]

Params = dict[str, np.ndarray]
INSTALL_HINT = "pip install 'medimg-spark[dl]'"


class CnnDependencyError(ModelError):
    """JAX/optax (the ``dl`` extra) is not installed but a CNN model was used."""


def require_jax() -> tuple[ModuleType, ModuleType, ModuleType]:
    """``(jax, jax.numpy, optax)``.

    Raises:
        CnnDependencyError: JAX or optax is not importable; the message names the extra to install.
    """
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError as exc:
        raise CnnDependencyError(
            f"the CNN models need JAX and optax, which are not installed ({exc}); run {INSTALL_HINT}"
        ) from exc
    return jax, jnp, optax


def jax_info() -> tuple[str, str]:
    """``(jax version, default backend)``, e.g. ``("0.4.30", "cpu")``."""
    jax, _, _ = require_jax()
    return str(jax.__version__), str(jax.default_backend())


# ----------------------------------------------------------------------------- configuration


def resolve_cnn_config(
    model_name: str, cfg: TrainConfig, overrides: dict[str, Any] | None = None
) -> CnnConfig:
    """The effective :class:`CnnConfig` of ``model_name``: ``cfg.cnn`` < ``cfg.params`` < ``overrides``.

    ``arch`` follows the model name (``cnn`` → ``"cnn"``, ``cnn_resnet`` → ``"resnet"``);
    ``class_weight`` and ``seed`` default to the train section's.

    Raises:
        ModelConfigError: an unknown key, a bad value, or an ``arch`` contradicting the model name.
    """
    from pydantic import ValidationError

    base = cfg.cnn.model_dump(exclude_unset=True) if cfg.cnn is not None else {}
    merged = {**base, **cfg.params, **(overrides or {})}
    want: Literal["cnn", "resnet"] = "resnet" if model_name.endswith("resnet") else "cnn"
    if merged.get("arch") not in (None, want):
        raise ModelConfigError(
            f"train.cnn.arch {merged['arch']!r} contradicts model {model_name!r}; "
            f"use model cnn for arch cnn and cnn_resnet for arch resnet"
        )
    merged["arch"] = want
    merged.setdefault("class_weight", cfg.class_weight)
    merged.setdefault("seed", cfg.seed)
    try:
        return CnnConfig.model_validate(merged)
    except ValidationError as exc:
        raise ModelConfigError(
            f"invalid CNN settings for {model_name} (train.cnn / train.params / train.grid): {exc}"
        ) from exc


class CnnSpec(BaseModel):
    """What the forward pass needs: the architecture and the input preparation (recorded in the card)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: Literal["cnn", "resnet"]
    widths: tuple[int, ...]
    blocks: int
    groups: int
    n_classes: int
    input_size: int
    normalisation: Literal["zscore", "percentile"]
    tta: bool
    dropout: float

    @classmethod
    def from_config(cls, cfg: CnnConfig, n_classes: int) -> CnnSpec:
        """The spec of a resolved config (``arch`` set) for ``n_classes`` outputs."""
        return cls(
            arch=cfg.arch or "cnn",
            widths=tuple(cfg.widths),
            blocks=cfg.blocks,
            groups=cfg.groups,
            n_classes=n_classes,
            input_size=cfg.input_size,
            normalisation=cfg.normalisation,
            tta=cfg.tta,
            dropout=cfg.dropout,
        )


# ----------------------------------------------------------------------------- frames


def prepare_frame(image: np.ndarray, size: int, normalisation: str = "zscore") -> np.ndarray:
    """One frame as the network's ``(size, size)`` float32 input.

    Colour frames are converted to grey (channel mean), resized with ``cv2.INTER_AREA`` and
    normalised per frame: ``zscore`` (mean 0, std 1; a constant frame becomes zeros) or
    ``percentile`` (the 1st–99th percentile range mapped to [-1, 1], clipped).

    Raises:
        ModelDataError: the array is not a 2-D frame (or 3-D with channels last).
    """
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr.astype(np.float32).mean(axis=2)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ModelDataError(f"a CNN input must be a (rows, cols[, channels]) frame, got shape {arr.shape}")
    x: np.ndarray = arr.astype(np.float32)
    if x.shape != (size, size):
        x = np.asarray(cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA), dtype=np.float32)
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    if normalisation == "percentile":
        lo, hi = np.percentile(x, [1.0, 99.0])
        span = float(hi - lo)
        x = np.clip((x - lo) / span * 2.0 - 1.0, -1.0, 1.0) if span > 0 else np.zeros_like(x)
    else:
        mean, std = float(x.mean()), float(x.std())
        x = (x - mean) / std if std > 1e-8 else np.zeros_like(x)
    return np.ascontiguousarray(x, dtype=np.float32)


def prepare_stack(images: Any, size: int, normalisation: str = "zscore") -> np.ndarray:
    """:func:`prepare_frame` of each frame of an iterable/stack: ``(n, size, size)`` float32."""
    frames = [prepare_frame(im, size, normalisation) for im in images]
    if not frames:
        return np.zeros((0, size, size), dtype=np.float32)
    return np.stack(frames)


# ----------------------------------------------------------------------------- parameters


def _he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)


def _norm_params(p: Params, name: str, c: int, gamma: float = 1.0) -> None:
    p[f"{name}.g"] = np.full((c,), gamma, dtype=np.float32)
    p[f"{name}.b"] = np.zeros((c,), dtype=np.float32)


def init_params(spec: CnnSpec, seed: int) -> Params:
    """He-initialised parameters of ``spec`` (numpy; deterministic in ``seed``)."""
    rng = np.random.default_rng(seed)
    p: Params = {}
    cin = 1
    if spec.arch == "cnn":
        for i, w in enumerate(spec.widths):
            for j in range(2):
                p[f"s{i}.c{j}.w"] = _he(rng, (3, 3, cin, w), 9 * cin)
                _norm_params(p, f"s{i}.n{j}", w)
                cin = w
    else:
        w0 = spec.widths[0]
        p["stem.w"] = _he(rng, (3, 3, 1, w0), 9)
        _norm_params(p, "stem.n", w0)
        cin = w0
        for i, w in enumerate(spec.widths):
            for k in range(spec.blocks):
                stride = 2 if (i > 0 and k == 0) else 1
                pre = f"s{i}.b{k}"
                p[f"{pre}.c1.w"] = _he(rng, (3, 3, cin, w), 9 * cin)
                _norm_params(p, f"{pre}.n1", w)
                p[f"{pre}.c2.w"] = _he(rng, (3, 3, w, w), 9 * w)
                _norm_params(p, f"{pre}.n2", w, gamma=0.0)  # each block starts as the identity
                if stride != 1 or cin != w:
                    p[f"{pre}.proj.w"] = _he(rng, (1, 1, cin, w), cin)
                cin = w
    p["head.w"] = (rng.standard_normal((cin, spec.n_classes)) * math.sqrt(1.0 / cin)).astype(np.float32)
    p["head.b"] = np.zeros((spec.n_classes,), dtype=np.float32)
    return p


# ----------------------------------------------------------------------------- forward pass (JAX)


def _forward(params: Any, x: Any, spec: CnnSpec, train: bool, key: Any) -> Any:
    """Logits ``(n, n_classes)`` of ``x`` ``(n, size, size)``; dropout only when ``train``."""
    jax, jnp, _ = require_jax()
    lax = jax.lax

    def conv(h: Any, w: Any, stride: int = 1) -> Any:
        return lax.conv_general_dilated(
            h, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def gn(h: Any, name: str) -> Any:
        n, hh, ww, c = h.shape
        g = min(spec.groups, c)
        while c % g:
            g -= 1
        r = h.reshape(n, hh, ww, g, c // g)
        mean = r.mean(axis=(1, 2, 4), keepdims=True)
        var = ((r - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
        r = (r - mean) * lax.rsqrt(var + 1e-5)
        return r.reshape(n, hh, ww, c) * params[f"{name}.g"] + params[f"{name}.b"]

    def pool(h: Any) -> Any:
        return lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")

    h = x[..., None]
    if spec.arch == "cnn":
        last = len(spec.widths) - 1
        for i in range(len(spec.widths)):
            for j in range(2):
                h = jax.nn.relu(gn(conv(h, params[f"s{i}.c{j}.w"]), f"s{i}.n{j}"))
            if i < last:
                h = pool(h)
    else:
        h = jax.nn.relu(gn(conv(h, params["stem.w"]), "stem.n"))
        for i in range(len(spec.widths)):
            for k in range(spec.blocks):
                stride = 2 if (i > 0 and k == 0) else 1
                pre = f"s{i}.b{k}"
                r = jax.nn.relu(gn(conv(h, params[f"{pre}.c1.w"], stride), f"{pre}.n1"))
                r = gn(conv(r, params[f"{pre}.c2.w"]), f"{pre}.n2")
                skip = conv(h, params[f"{pre}.proj.w"], stride) if f"{pre}.proj.w" in params else h
                h = jax.nn.relu(r + skip)
    h = h.mean(axis=(1, 2))
    if train and spec.dropout > 0:
        keep = jax.random.bernoulli(key, 1.0 - spec.dropout, h.shape)
        h = jnp.where(keep, h / (1.0 - spec.dropout), 0.0)
    return h @ params["head.w"] + params["head.b"]


@functools.lru_cache(maxsize=16)
def _logits_fn(spec_json: str) -> Any:
    """A jit-compiled ``(params, x) -> logits`` of one spec (with flip TTA when the spec says so)."""
    jax, _, _ = require_jax()
    spec = CnnSpec.model_validate_json(spec_json)

    def fn(params: Any, x: Any) -> Any:
        out = _forward(params, x, spec, False, None)
        if spec.tta:
            out = (out + _forward(params, x[:, :, ::-1], spec, False, None)) / 2.0
        return out

    return jax.jit(fn)


def _batch_size(n: int, cap: int) -> int:
    """A power of two ≥ n, at most ``cap``: few distinct shapes, so few compilations."""
    return max(1, min(cap, 1 << max(0, (n - 1).bit_length())))


def predict_logits(params: Params | Any, x: np.ndarray, spec: CnnSpec, batch: int = 256) -> np.ndarray:
    """Logits ``(n, n_classes)`` of prepared frames ``x`` ``(n, size, size)`` (jit, batched, padded).

    Raises:
        ModelDataError: ``x`` is not ``(n, input_size, input_size)``.
        CnnDependencyError: JAX is not installed.
    """
    _, jnp, _ = require_jax()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3 or x.shape[1:] != (spec.input_size, spec.input_size):
        raise ModelDataError(
            f"CNN inputs must be prepared frames of shape (n, {spec.input_size}, {spec.input_size}), "
            f"got {x.shape}; pass them through prepare_stack"
        )
    n = len(x)
    if n == 0:
        return np.zeros((0, spec.n_classes), dtype=np.float32)
    fn = _logits_fn(spec.model_dump_json())
    dev = {k: jnp.asarray(v) for k, v in params.items()}
    bs = _batch_size(n, batch)
    out = np.empty((n, spec.n_classes), dtype=np.float32)
    for s in range(0, n, bs):
        chunk = x[s : s + bs]
        m = len(chunk)
        if m < bs:
            chunk = np.concatenate([chunk, np.zeros((bs - m, *chunk.shape[1:]), dtype=np.float32)])
        out[s : s + m] = np.asarray(fn(dev, jnp.asarray(chunk)))[:m]
    return out


# ----------------------------------------------------------------------------- forward pass (numpy)
#
# The executors run this one: no JAX in the Spark workers, so inference needs only numpy (no ``dl``
# extra on the cluster) and stays within the workers' address-space limit
# (``spark.executor.pyspark.memory``, under which XLA's compiler crashed the worker with
# ``std::bad_alloc``) and without one XLA thread pool per Python worker. It mirrors :func:`_forward`
# (XLA's "SAME" padding puts the odd pixel at the end); tests check both agree to 1e-5.


def _same_pad(size: int, k: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def _np_conv(h: np.ndarray, w: np.ndarray, stride: int = 1) -> np.ndarray:
    """NHWC × HWIO convolution with XLA's SAME padding (im2col + one matrix product)."""
    kh, kw = w.shape[:2]
    hh, ww = h.shape[1:3]
    (t, b), (lft, r) = _same_pad(hh, kh, stride), _same_pad(ww, kw, stride)
    hp = np.pad(h, ((0, 0), (t, b), (lft, r), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(hp, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    # win: (n, oh, ow, cin, kh, kw) → contract (kh, kw, cin) with w
    return np.einsum("nhwcij,ijco->nhwo", win, w, optimize=True).astype(np.float32)


def _np_forward(params: Params, x: np.ndarray, spec: CnnSpec) -> np.ndarray:
    """Logits of :func:`_forward` (inference, no dropout) in numpy."""

    def gn(h: np.ndarray, name: str) -> np.ndarray:
        n, hh, ww, c = h.shape
        g = min(spec.groups, c)
        while c % g:
            g -= 1
        r = h.reshape(n, hh, ww, g, c // g)
        mean = r.mean(axis=(1, 2, 4), keepdims=True)
        var = ((r - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
        r = (r - mean) / np.sqrt(var + 1e-5)
        return (r.reshape(n, hh, ww, c) * params[f"{name}.g"] + params[f"{name}.b"]).astype(np.float32)

    def pool(h: np.ndarray) -> np.ndarray:
        n, hh, ww, c = h.shape
        (t, b), (lft, r) = _same_pad(hh, 2, 2), _same_pad(ww, 2, 2)
        hp = np.pad(h, ((0, 0), (t, b), (lft, r), (0, 0)), constant_values=-np.inf)
        return hp.reshape(n, hp.shape[1] // 2, 2, hp.shape[2] // 2, 2, c).max(axis=(2, 4))

    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    h = np.asarray(x, dtype=np.float32)[..., None]
    if spec.arch == "cnn":
        last = len(spec.widths) - 1
        for i in range(len(spec.widths)):
            for j in range(2):
                h = relu(gn(_np_conv(h, params[f"s{i}.c{j}.w"]), f"s{i}.n{j}"))
            if i < last:
                h = pool(h)
    else:
        h = relu(gn(_np_conv(h, params["stem.w"]), "stem.n"))
        for i in range(len(spec.widths)):
            for k in range(spec.blocks):
                stride = 2 if (i > 0 and k == 0) else 1
                pre = f"s{i}.b{k}"
                r = relu(gn(_np_conv(h, params[f"{pre}.c1.w"], stride), f"{pre}.n1"))
                r = gn(_np_conv(r, params[f"{pre}.c2.w"]), f"{pre}.n2")
                skip = _np_conv(h, params[f"{pre}.proj.w"], stride) if f"{pre}.proj.w" in params else h
                h = relu(r + skip)
    feats = h.mean(axis=(1, 2))
    return np.asarray(feats @ params["head.w"] + params["head.b"], dtype=np.float32)


def predict_logits_numpy(params: Params, x: np.ndarray, spec: CnnSpec, batch: int = 256) -> np.ndarray:
    """:func:`predict_logits` without JAX (what the executors run), batched to bound memory.

    Raises:
        ModelDataError: ``x`` is not ``(n, input_size, input_size)``.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3 or x.shape[1:] != (spec.input_size, spec.input_size):
        raise ModelDataError(
            f"CNN inputs must be prepared frames of shape (n, {spec.input_size}, {spec.input_size}), "
            f"got {x.shape}; pass them through prepare_stack"
        )
    p = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
    out = np.empty((len(x), spec.n_classes), dtype=np.float32)
    for s in range(0, len(x), batch):
        chunk = x[s : s + batch]
        z = _np_forward(p, chunk, spec)
        if spec.tta:
            z = (z + _np_forward(p, chunk[:, :, ::-1], spec)) / 2.0
        out[s : s + len(chunk)] = z
    return out


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def predict_proba(
    params: Params | Any, x: np.ndarray, spec: CnnSpec, temperature: float = 1.0, batch: int = 256
) -> np.ndarray:
    """Class probabilities ``(n, n_classes)`` of prepared frames (softmax of logits / temperature)."""
    return softmax(predict_logits(params, x, spec, batch), temperature)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``softmax(logits / T)`` (T in [0.05, 20])."""
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=int)
    if len(z) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        p = softmax(z, math.exp(log_t))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))

    res = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(res.x))


# ----------------------------------------------------------------------------- training


class EpochRecord(TypedDict):
    """One epoch of the training history recorded in the card."""

    epoch: int
    train_loss: float
    val_loss: float | None
    val_roc_auc: float | None
    seconds: float


@dataclass
class CnnFit:
    """A fitted network: best-epoch parameters, history, val logits and the fitted temperature."""

    params: Params
    spec: CnnSpec
    history: list[EpochRecord]
    best_epoch: int
    temperature: float
    val_logits: np.ndarray | None
    seconds: float
    backend: str
    jax_version: str
    class_weights: list[float] = field(default_factory=list)


def _class_weights(y: np.ndarray, n_classes: int, mode: str | None) -> np.ndarray:
    if mode != "balanced":
        return np.ones(n_classes, dtype=np.float32)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)
    return w.astype(np.float32)


def _val_scores(
    logits: np.ndarray, y: np.ndarray, n_classes: int, pos_index: int | None
) -> tuple[float, float | None]:
    """``(mean cross-entropy, ROC AUC or None)`` of val logits."""
    from sklearn.metrics import roc_auc_score

    p = softmax(logits)
    loss = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))
    if len(np.unique(y)) < 2:
        return loss, None
    if n_classes == 2:
        pos = 1 if pos_index is None else pos_index
        return loss, float(roc_auc_score((y == pos).astype(int), p[:, pos]))
    if len(np.unique(y)) < n_classes:
        return loss, None
    return loss, float(roc_auc_score(y, p, multi_class="ovr", average="macro"))


@functools.lru_cache(maxsize=8)
def _train_step(
    spec_json: str,
    smooth: float,
    lr: float,
    weight_decay: float,
    warm: int,
    total: int,
    names: tuple[str, ...],
) -> tuple[Any, Any]:
    """``(optax transform, jit-compiled step)`` for one configuration, cached so a refit does not recompile."""
    jax, jnp, optax = require_jax()
    spec = CnnSpec.model_validate_json(spec_json)
    n_classes = spec.n_classes
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warm > 0 else lr,
        peak_value=lr,
        warmup_steps=warm,
        decay_steps=max(total, warm + 1),
        end_value=lr * 0.01,
    )
    tx = optax.adamw(schedule, weight_decay=weight_decay, mask={k: k.endswith(".w") for k in names})

    def loss_fn(p: Any, xb: Any, yb: Any, wb: Any, key: Any) -> Any:
        logits = _forward(p, xb, spec, True, key)
        target = jax.nn.one_hot(yb, n_classes) * (1.0 - smooth) + smooth / n_classes
        ce = -(target * jax.nn.log_softmax(logits)).sum(-1)
        return (ce * wb).sum() / jnp.maximum(wb.sum(), 1e-8)

    def step(p: Any, state: Any, xb: Any, yb: Any, wb: Any, key: Any) -> Any:
        loss, grads = jax.value_and_grad(loss_fn)(p, xb, yb, wb, key)
        updates, state = tx.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    return tx, jax.jit(step)


def fit_cnn(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    n_classes: int,
    cfg: CnnConfig,
    pos_index: int | None = None,
    log: Any = None,
) -> CnnFit:
    """Train a network on prepared frames and integer labels (``0..n_classes-1``).

    Args:
        x_train, x_val: prepared frames ``(n, input_size, input_size)`` float32 (see :func:`prepare_stack`).
        y_train, y_val: class indices.
        cfg: a resolved :class:`CnnConfig` (``arch`` and ``seed`` set: :func:`resolve_cnn_config`).
        pos_index: index of the positive class (binary tasks; the val ROC AUC scores it).
        log: optional ``callable(str)`` receiving one line per epoch.

    Returns:
        The best-epoch fit (the last epoch when there is no val split).

    Raises:
        ModelDataError: shapes or labels do not fit.
        CnnDependencyError: JAX/optax are not installed.
    """
    jax, jnp, _ = require_jax()
    t0 = time.time()
    spec = CnnSpec.from_config(cfg, n_classes)
    seed = int(cfg.seed or 0)
    x = np.ascontiguousarray(x_train, dtype=np.float32)
    y = np.asarray(y_train, dtype=np.int32)
    size = cfg.input_size
    if x.ndim != 3 or x.shape[1:] != (size, size) or len(x) != len(y):
        raise ModelDataError(
            f"training frames have shape {x.shape} for {len(y)} labels; expected (n, {size}, {size})"
        )
    if len(y) == 0 or y.min() < 0 or y.max() >= n_classes:
        raise ModelDataError(f"training labels must be class indices in 0..{n_classes - 1}")
    has_val = x_val is not None and y_val is not None and len(y_val) > 0
    xv = np.asarray(x_val, dtype=np.float32) if has_val and x_val is not None else None
    yv = np.asarray(y_val, dtype=np.int32) if has_val and y_val is not None else None
    monitor = cfg.monitor if cfg.monitor != "auto" else ("roc_auc" if n_classes == 2 else "loss")

    cw = _class_weights(y, n_classes, cfg.class_weight)
    bs = min(cfg.batch_size, len(y))
    steps = math.ceil(len(y) / bs)
    total = steps * cfg.epochs
    warm = min(round(cfg.warmup_epochs * steps), max(total - 1, 0))
    params0 = init_params(spec, seed)
    tx, step = _train_step(
        spec.model_dump_json(),
        float(cfg.label_smoothing),
        cfg.lr,
        cfg.weight_decay,
        warm,
        total,
        tuple(params0),
    )
    params = {k: jnp.asarray(v) for k, v in params0.items()}
    opt_state = tx.init(params)

    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    aug_cfg: AugmentConfig | None = cfg.augment
    history: list[EpochRecord] = []
    best: Params | None = None
    best_score, best_epoch, wait = -np.inf, 0, 0
    best_val_logits: np.ndarray | None = None
    for epoch in range(cfg.epochs):
        te = time.time()
        xe = x
        if aug_cfg is not None:
            from medimg_spark.ml.augment import augment_image

            arng = np.random.default_rng([aug_cfg.seed, seed, epoch])
            xe = np.stack([augment_image(im, arng, aug_cfg) for im in x])
        perm = rng.permutation(len(y))
        tot, cnt = 0.0, 0
        for s in range(steps):
            idx = perm[s * bs : (s + 1) * bs]
            m = len(idx)
            wb = cw[y[idx]]
            if m < bs:
                idx = np.concatenate([idx, np.zeros(bs - m, dtype=idx.dtype)])
                wb = np.concatenate([wb, np.zeros(bs - m, dtype=np.float32)])
            key, sub = jax.random.split(key)
            params, opt_state, loss = step(
                params, opt_state, jnp.asarray(xe[idx]), jnp.asarray(y[idx]), jnp.asarray(wb), sub
            )
            tot += float(loss) * m
            cnt += m
        rec: EpochRecord = {
            "epoch": epoch + 1,
            "train_loss": round(tot / max(cnt, 1), 6),
            "val_loss": None,
            "val_roc_auc": None,
            "seconds": 0.0,
        }
        stop = False
        if xv is not None and yv is not None:
            vl = predict_logits(params, xv, spec, cfg.predict_batch)
            v_loss, v_auc = _val_scores(vl, yv, n_classes, pos_index)
            rec["val_loss"] = round(v_loss, 6)
            rec["val_roc_auc"] = None if v_auc is None else round(v_auc, 6)
            score = -v_loss if monitor == "loss" or v_auc is None else v_auc
            if score > best_score:
                best_score, best_epoch, wait = score, epoch + 1, 0
                best = {k: np.asarray(v) for k, v in params.items()}
                best_val_logits = vl
            else:
                wait += 1
                stop = wait >= cfg.patience
        rec["seconds"] = round(time.time() - te, 3)
        history.append(rec)
        if log is not None:
            log(f"epoch {rec['epoch']}: {rec}")
        if stop:
            break
    if best is None:
        best = {k: np.asarray(v) for k, v in params.items()}
        best_epoch = len(history)
    temperature = 1.0
    if cfg.calibrate and best_val_logits is not None and yv is not None:
        temperature = fit_temperature(best_val_logits, yv)
    version, backend = jax_info()
    return CnnFit(
        params=best,
        spec=spec,
        history=history,
        best_epoch=best_epoch,
        temperature=temperature,
        val_logits=best_val_logits,
        seconds=time.time() - t0,
        backend=backend,
        jax_version=version,
        class_weights=[float(v) for v in cw],
    )


def check_class_indices(labels: np.ndarray, classes: list[str]) -> np.ndarray:
    """Class indices of string ``labels`` in ``classes`` order.

    Raises:
        ModelDataError: a label is not one of ``classes``.
    """
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(v) for v in labels} - set(lookup))
    if unknown:
        raise ModelDataError(f"labels {unknown} do not occur in the train split {classes}; fix the split")
    return np.asarray([lookup[str(v)] for v in labels], dtype=np.int32)


def check_config(model_name: str, cfg: TrainConfig) -> CnnConfig:
    """Validate the CNN settings (and every grid point) of ``model_name`` without training (no Spark).

    Raises:
        ModelConfigError: invalid settings or grid values.
    """
    out = resolve_cnn_config(model_name, cfg)
    for point in grid_points(cfg.grid):
        resolve_cnn_config(model_name, cfg, point)
    return out


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of a ``train.grid`` mapping (``[{}]`` when empty).

    Raises:
        ModelConfigError: an entry is not a non-empty list.
    """
    from itertools import product

    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ModelConfigError(f"grid entry {k!r} must be a non-empty list of values")
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in product(*(grid[k] for k in keys))]
