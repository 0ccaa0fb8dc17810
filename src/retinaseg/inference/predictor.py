"""The one inference path: preprocess → (tiled, batched) forward → probability map → threshold → the
input's size. Evaluation, ``retinaseg predict``, the MLflow pyfunc model, the web demo and the
benchmarks all go through :class:`Predictor` (or :func:`predict_batch`, its functional core).

:func:`predict_batch` preprocesses exactly as training did (``retinaseg.data.preprocess``), runs the
model on whole padded images (``batch_size`` at a time) when they fit in one tile, otherwise on
overlapping tiles blended with a Gaussian weight, optionally averages flip test-time augmentation,
applies the sigmoid, and maps each result back to its input's original height and width. The tile
size and overlap are the ``evaluate`` group of params.yaml (:class:`InferenceSettings`), so every
consumer predicts the way the evaluate stage measured.

Speed: every forward pass runs under ``torch.inference_mode``, ``batch_size`` images (or tiles) at a
time, in channels-last memory order (``channels_last``) with the batch norms folded into the
convolutions (``fold_batch_norm``), both on by default, and, with ``precision="auto"`` (the
default), under autocast on CUDA (bf16 where supported, else fp16); ``precision="fp32"`` forces full
precision, ``"bf16"``/``"fp16"`` force autocast on any device (the CPU runs bf16 too: that is how the
tests cover the CUDA path). The network's output is cast to fp32 before the sigmoid. Measured on a
2-core AMD EPYC with the drive-cpu recipe's trained U-Net 16×3, ``retinaseg predict``'s path for one
565×584 DRIVE image (``benchmarks/cpu_recipe.py``, median of 15 calls): 105 ms against 262–283 ms
contiguous with the norms kept; 165 ms against 321 ms in ``benchmarks/inference_latency.py``'s
end-to-end rows (a fresh process, ``reports/benchmarks/inference.json``). Folding gained nothing
measurable there (165.5 against 165.1 ms); it is kept on because it computes the same maps (to
1e-5) and does one pass fewer over each feature map, which matters more where memory is slower.

The sliding window is written here (about 40 lines) rather than taken from MONAI's
``sliding_window_inference`` (a dependency now): both tile the same way (stride tile×(1-overlap),
the last tile aligned to the end) and blend with the same Gaussian (sigma = tile/8), and
``benchmarks/inference_latency.py`` times the two side by side with their largest difference
(``tiler`` rows). Measured on the shared 2-core CPU (a 16×3 U-Net, one 1024² image in 512 px tiles,
4 per pass, fp32, median of 7): this one 9.6 s, MONAI's 19.4 s, maps equal to 1e-6; the quick run
(96² in 48 px tiles) agreed to 7e-6. This one also runs the flip TTA per batch of tiles and needs no
MetaTensor conversion. The Gaussian is clamped away from zero so border pixels covered by one tile
only keep a valid weight; overlapping tiles are averaged with those weights.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from retinaseg.core.config import EvaluateParams, PreprocessParams
from retinaseg.core.devices import resolve_device
from retinaseg.data.preprocess import derive_fov, image_to_tensor, preprocess_image, restore_geometry
from retinaseg.inference.overlays import probability_overlay

_DEFAULTS = EvaluateParams()  # tile size and overlap when a caller does not pass them (= params.yaml)

DEFAULT_THRESHOLD = 0.5
DEFAULT_BATCH_SIZE = 4  # images (or tiles) per forward pass
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto: autocast on CUDA (bf16 where supported), fp32 elsewhere
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None = fp32 (no autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return _DTYPES.get(precision)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool = True) -> nn.Module:
    """``model`` on ``device`` in eval mode, its 4-D weights channels-last or contiguous (in place)."""
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _foldable_pairs(model: nn.Module) -> list[tuple[nn.Sequential, str, str]]:
    """``(container, conv name, norm name)`` of every ``Conv2d`` directly followed by a
    ``BatchNorm2d`` with running statistics inside an ``nn.Sequential`` of ``model``."""
    pairs = []
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module._modules.items())
        for (conv_name, conv), (norm_name, norm) in zip(children, children[1:], strict=False):
            if (
                type(conv) is nn.Conv2d
                and type(norm) is nn.BatchNorm2d
                and norm.track_running_stats
                and norm.running_mean is not None
            ):
                pairs.append((module, conv_name, norm_name))
    return pairs


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """``model`` for inference with every batch norm that directly follows a convolution in an
    ``nn.Sequential`` folded into that convolution's weights and bias (the norm becomes an
    ``nn.Identity``): a folded copy, so ``model`` itself is left as it was (a training run may go on
    with it); ``model`` itself when there is nothing to fold.

    In eval mode a batch norm is a fixed per-channel affine map, so the folded network computes the
    same function (to float rounding: ~1e-7 on the U-Net's logits) with one pass over each feature
    map fewer. That pattern is every conv + norm of the three models (the U-Nets' ``DoubleConv``,
    the attention gates, smp's ``Conv2dReLU``); the ResNet34 encoder's blocks hold theirs as plain
    attributes and keep them. The arithmetic is torch's ``fuse_conv_bn_eval``; the walk over the
    modules is ours because ``torch.fx``'s fuser needs a symbolically traceable ``forward`` and ours
    pads by the input's shape. A norm that keeps no running statistics is left alone. A model that
    cannot be copied (it holds a lock, say) is returned unfolded, with a warning that says so.
    """
    if not _foldable_pairs(model):
        return model
    try:
        folded = copy.deepcopy(model).eval()
    except (TypeError, copy.Error, RuntimeError) as exc:
        warnings.warn(
            f"fold_batch_norm: {type(model).__name__} cannot be copied ({exc}); predicting with its "
            "batch norms unfolded (the same maps, a little slower; fold_batch_norm=False says so quietly)",
            stacklevel=2,
        )
        return model
    for container, conv_name, norm_name in _foldable_pairs(folded):
        conv, norm = container._modules[conv_name], container._modules[norm_name]
        container._modules[conv_name] = fuse_conv_bn_eval(conv, norm)
        container._modules[norm_name] = nn.Identity()
    return folded


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with at least ``overlap`` overlap.

    The last tile is aligned to the end, so every position is covered. ``length <= tile`` → ``[0]``.
    """
    if tile <= 0:
        raise ValueError(f"tile size must be positive, got {tile}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"tile overlap must be in [0, 1), got {overlap}")
    if length <= tile:
        return [0]
    stride = max(1, int(round(tile * (1.0 - overlap))))
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def gaussian_weight(height: int, width: int, sigma_scale: float = 0.125) -> torch.Tensor:
    """A height×width Gaussian blending weight (peak 1, sigma = ``sigma_scale`` × side), floored at 1e-3."""

    def bell(n: int) -> torch.Tensor:
        coords = torch.arange(n, dtype=torch.float32) - (n - 1) / 2.0
        return torch.exp(-(coords**2) / (2.0 * (sigma_scale * n) ** 2))

    w = torch.outer(bell(height), bell(width))
    return (w / w.max()).clamp_min(1e-3)


def _flip_variants(tta: bool) -> list[tuple[int, ...]]:
    # identity, horizontal, vertical, both: the dims flipped on N×C×H×W
    return [(), (3,), (2,), (2, 3)] if tta else [()]


def forward_probs(
    model: nn.Module,
    batch: torch.Tensor,
    tta: bool = False,
    precision: str = "auto",
    channels_last: bool = True,
) -> torch.Tensor:
    """Sigmoid probabilities N×1×H×W (fp32) for a normalised batch; with ``tta``, the mean over flips.

    ``precision``: see :func:`autocast_dtype`; ``channels_last``: the batch is passed channels-last.
    """
    out = None
    variants = _flip_variants(tta)
    dtype = autocast_dtype(batch.device, precision)
    for dims in variants:
        x = torch.flip(batch, dims) if dims else batch
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(batch.device, dtype):
            logits = model(x)
        p = torch.sigmoid(logits.float())
        p = torch.flip(p, dims) if dims else p
        out = p if out is None else out + p
    return out / len(variants)


def sliding_window_probs(
    model: nn.Module,
    image: torch.Tensor,
    tile_size: int,
    overlap: float,
    tta: bool = False,
    tile_batch: int = DEFAULT_BATCH_SIZE,
    precision: str = "auto",
    channels_last: bool = True,
) -> torch.Tensor:
    """Probability map H×W for one normalised image 3×H×W (already on the model's device).

    One forward pass when the image fits in a tile; otherwise overlapping tiles (``tile_batch`` per
    forward pass), Gaussian-blended.
    """
    _, h, w = image.shape
    if h <= tile_size and w <= tile_size:
        return forward_probs(model, image[None], tta, precision, channels_last)[0, 0]
    th, tw = min(tile_size, h), min(tile_size, w)
    weight = gaussian_weight(th, tw).to(image.device)
    acc = torch.zeros((h, w), dtype=torch.float32, device=image.device)
    norm = torch.zeros_like(acc)
    boxes = [(y, x) for y in tile_starts(h, th, overlap) for x in tile_starts(w, tw, overlap)]
    step = max(1, tile_batch)
    for i in range(0, len(boxes), step):
        chunk = boxes[i : i + step]
        tiles = torch.stack([image[:, y : y + th, x : x + tw] for y, x in chunk])
        probs = forward_probs(model, tiles, tta, precision, channels_last)[:, 0]
        for (y, x), p in zip(chunk, probs, strict=True):
            acc[y : y + th, x : x + tw] += p * weight
            norm[y : y + th, x : x + tw] += weight
    return acc / norm


def predict_proba(
    model: nn.Module,
    image_rgb_uint8: np.ndarray,
    preprocess: PreprocessParams,
    device: str | torch.device = "cpu",
    tile_size: int = _DEFAULTS.tile_size,
    overlap: float = _DEFAULTS.tile_overlap,
    tta: bool = False,
    precision: str = "auto",
    channels_last: bool = True,
) -> np.ndarray:
    """Vessel probability map (orig_h × orig_w float32 in [0, 1]) for one H×W×3 uint8 RGB image.

    Args:
        model: a network returning logits N×1×H×W (put in eval mode here).
        image_rgb_uint8: the image as read by ``retinaseg.data.io.read_image``.
        preprocess: the preprocessing the model was trained with (its model card's ``preprocess``).
        device: where to run (``"cpu"``, ``"cuda"``, a ``torch.device``, or ``"auto"``).
        tile_size: preprocessed images larger than this are predicted with a sliding window.
        overlap: fraction of a tile shared with its neighbour.
        tta: average the predictions over horizontal/vertical flips (4 passes).
        precision: ``auto`` (mixed precision on CUDA, else fp32), ``fp32``, ``bf16`` or ``fp16``.
        channels_last: run the network in channels-last memory order.
    """
    return predict_batch(
        model,
        [image_rgb_uint8],
        preprocess,
        device,
        tile_size,
        overlap,
        tta,
        precision=precision,
        channels_last=channels_last,
    )[0]


def zero_outside_fov(prob: np.ndarray, prepared: np.ndarray) -> np.ndarray:
    """``prob`` (on the preprocessed canvas) set to 0 outside the field of view of ``prepared`` (the
    preprocessed image). The models learn from the pixels inside the FOV only (the loss is weighted
    by the FOV mask), so what they output on the black border means nothing; the FOV is derived from
    the image itself (:func:`~retinaseg.data.preprocess.derive_fov`), the same way for every caller:
    evaluation, ``retinaseg predict``, the server and the web page."""
    return (prob * derive_fov(prepared)).astype(np.float32, copy=False)


def predict_batch(
    model: nn.Module,
    images: Sequence[np.ndarray],
    preprocess: PreprocessParams,
    device: str | torch.device = "cpu",
    tile_size: int = _DEFAULTS.tile_size,
    overlap: float = _DEFAULTS.tile_overlap,
    tta: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    precision: str = "auto",
    channels_last: bool = True,
) -> list[np.ndarray]:
    """:func:`predict_proba` for several images; images that fit in one tile go through in batches.

    Every preprocessed image is ``preprocess.size`` square, so images batch together whatever their
    original sizes; each result is mapped back to its own original size. Larger images are tiled,
    ``batch_size`` tiles per forward pass. Outside the image's field of view the probability is 0
    (:func:`zero_outside_fov`). ``precision`` and ``channels_last``: see the module docstring.
    """
    dev = resolve_device(device)
    autocast_dtype(dev, precision)  # an unknown precision fails before any work
    model = prepare_model(model, dev, channels_last)
    step = max(1, batch_size)
    prepared = []
    for i, img in enumerate(images):
        arr = np.asarray(img)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"image {i}: expected an H×W×3 uint8 RGB array, got {arr.dtype} {arr.shape}")
        prepared.append(preprocess_image(arr, preprocess))
    results: list[np.ndarray | None] = [None] * len(prepared)
    with torch.inference_mode():
        fits = [i for i, (p, _) in enumerate(prepared) if max(p.shape[:2]) <= tile_size]
        for start in range(0, len(fits), step):
            chunk = fits[start : start + step]
            batch = torch.stack([image_to_tensor(prepared[i][0]) for i in chunk]).to(dev)
            probs = forward_probs(model, batch, tta, precision, channels_last)[:, 0].cpu().numpy()
            for i, p in zip(chunk, probs, strict=True):
                results[i] = p
        for i, (p, _) in enumerate(prepared):
            if results[i] is None:
                tensor = image_to_tensor(p).to(dev)
                tiled = sliding_window_probs(
                    model, tensor, tile_size, overlap, tta, step, precision, channels_last
                )
                results[i] = tiled.cpu().numpy()
    out = []
    for prob, (canvas, geometry) in zip(results, prepared, strict=True):
        restored = restore_geometry(zero_outside_fov(prob.astype(np.float32), canvas), geometry)
        out.append(np.clip(restored, 0.0, 1.0).astype(np.float32))
    return out


def scaled_preprocess(preprocess: PreprocessParams, size: int) -> PreprocessParams:
    """A copy of ``preprocess`` with another target size (used to rescale inputs for cross-dataset use)."""
    if size < 8:
        raise ValueError(f"preprocessed size {size} is too small (check --vessel-scale)")
    return dataclasses.replace(preprocess, size=int(size))


# ------------------------------------------------------------------------------------- the object API


@dataclass(frozen=True)
class InferenceSettings:
    """How images go through the network: the tile size and overlap of the ``evaluate`` group of
    params.yaml (defaults = params.yaml's), flip TTA, images (or tiles) per forward pass, the
    precision (``auto``: mixed precision on CUDA, fp32 elsewhere; ``fp32`` forces full precision),
    channels-last memory order, and whether the predictor folds the batch norms into the
    convolutions (:func:`fold_batch_norm`: the same maps, one pass over each feature map fewer).
    ``scales``: multi-scale TTA, the maps of the input resized to each scale times the preprocessed
    size, averaged at the image's own size (``(1.0,)``: one pass at the model's size)."""

    tile_size: int = _DEFAULTS.tile_size
    tile_overlap: float = _DEFAULTS.tile_overlap
    tta: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    precision: str = "auto"
    channels_last: bool = True
    fold_batch_norm: bool = True
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(x) for x in self.scales))
        if not self.scales or any(not (math.isfinite(x) and x > 0) for x in self.scales):
            raise ValueError(f"scales must be positive numbers, at least one; got {self.scales}")
        if self.tile_size <= 0:
            raise ValueError(f"tile size must be positive, got {self.tile_size}")
        if not 0.0 <= self.tile_overlap < 1.0:
            raise ValueError(f"tile overlap must be in [0, 1), got {self.tile_overlap}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")

    def tta_words(self) -> str:
        """``""`` for a single plain pass, else the augmentations: ``"flip TTA, scales 0.85, 1, 1.15"``."""
        words = ["flip TTA"] if self.tta else []
        if self.scales != (1.0,):
            words.append("scales " + ", ".join(f"{x:g}" for x in self.scales))
        return ", ".join(words)

    @classmethod
    def from_params(
        cls, evaluate: EvaluateParams, tta: bool | None = None, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> InferenceSettings:
        """The evaluate stage's settings (``evaluate.tta`` unless ``tta`` is given)."""
        return cls(
            evaluate.tile_size,
            evaluate.tile_overlap,
            evaluate.tta if tta is None else tta,
            batch_size,
            precision=evaluate.precision,
            scales=tuple(evaluate.tta_scales),
        )


def resolve_threshold(threshold: float | None, card: Any = None) -> float:
    """The threshold to use: the explicit one, else the model card's, else 0.5; must be in [0, 1]."""
    if threshold is None:
        threshold = getattr(card, "threshold", None)
    if threshold is None:
        threshold = DEFAULT_THRESHOLD
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    return threshold


@dataclass(frozen=True, eq=False)
class Segmentation:
    """One image's result at the input's size: the probability map and, at ``threshold``, the mask
    (``prob >= threshold``, 0/255) and the overlay (vessels tinted on the image)."""

    image: np.ndarray  # H x W x 3 uint8, the input
    prob: np.ndarray  # H x W float32 in [0, 1]
    threshold: float

    @functools.cached_property
    def mask(self) -> np.ndarray:
        """H x W uint8 {0, 255}."""
        return np.where(self.prob >= self.threshold, 255, 0).astype(np.uint8)

    @functools.cached_property
    def overlay(self) -> np.ndarray:
        """H x W x 3 uint8."""
        return probability_overlay(self.image, self.prob, self.threshold)

    @property
    def vessel_fraction(self) -> float:
        """Fraction of pixels labelled vessel."""
        return float((self.mask > 0).mean())

    def prob_uint8(self) -> np.ndarray:
        """The probability map scaled to 0-255 (rounded)."""
        return np.clip(np.rint(self.prob * 255.0), 0, 255).astype(np.uint8)


class Predictor:
    """A loaded model with its preprocessing, device, settings and default threshold.

    ``probabilities(images)`` → one probability map per image, at the image's own size;
    ``segment(images, threshold)`` → one :class:`Segmentation` per image. Build one with
    :meth:`from_card` (a saved model) or :func:`retinaseg.inference.loading.load_predictor`
    (a model directory or an MLflow URI).
    """

    def __init__(
        self,
        model: nn.Module,
        preprocess: PreprocessParams,
        device: str | torch.device = "cpu",
        settings: InferenceSettings | None = None,
        threshold: float | None = None,
        card: Any = None,
    ) -> None:
        self.device = resolve_device(device)
        self.settings = settings or InferenceSettings()
        if self.settings.fold_batch_norm:  # a copy: the caller's model is not changed
            model = fold_batch_norm(model)
        self.model = prepare_model(model, self.device, self.settings.channels_last)
        self.preprocess = preprocess
        self.threshold = resolve_threshold(threshold)
        self.card = card

    @classmethod
    def from_card(
        cls,
        model: nn.Module,
        card: Any,
        device: str | torch.device = "cpu",
        settings: InferenceSettings | None = None,
    ) -> Predictor:
        """A predictor with the model card's preprocessing and threshold (0.5 when it has none)."""
        return cls(model, card.preprocess_params(), device, settings, card.threshold, card)

    def with_settings(self, **changes: Any) -> Predictor:
        """The same model with some settings changed (``tta=True``, ``batch_size=8``, ...)."""
        settings = dataclasses.replace(self.settings, **changes)
        return Predictor(self.model, self.preprocess, self.device, settings, self.threshold, self.card)

    def probabilities(
        self, images: Sequence[np.ndarray], preprocess: PreprocessParams | None = None
    ) -> list[np.ndarray]:
        """Probability maps (H×W float32 in [0, 1], each at its image's size) for H×W×3 uint8 RGB
        images; ``preprocess`` overrides the model's (cross-dataset rescaling). With several
        ``settings.scales``, the mean of the maps at each scale times the preprocessed size."""
        s = self.settings
        pre = preprocess or self.preprocess
        total: list[np.ndarray] | None = None
        for scale in s.scales:
            maps = predict_batch(
                self.model,
                images,
                scaled_preprocess(pre, round(pre.size * scale)),
                self.device,
                s.tile_size,
                s.tile_overlap,
                s.tta,
                s.batch_size,
                s.precision,
                s.channels_last,
            )
            total = maps if total is None else [a + b for a, b in zip(total, maps, strict=True)]
        assert total is not None  # settings hold at least one scale
        if len(s.scales) == 1:
            return total
        return [(m / len(s.scales)).astype(np.float32) for m in total]

    def probability(self, image: np.ndarray, preprocess: PreprocessParams | None = None) -> np.ndarray:
        """:meth:`probabilities` of one image."""
        return self.probabilities([image], preprocess)[0]

    def segment(self, images: Sequence[np.ndarray], threshold: float | None = None) -> list[Segmentation]:
        """Probability maps thresholded at ``threshold`` (else the model's own, else 0.5)."""
        thr = self.threshold if threshold is None else resolve_threshold(threshold)
        return [
            Segmentation(np.asarray(image), prob, thr)
            for image, prob in zip(images, self.probabilities(images), strict=True)
        ]


class MeanPredictor:
    """An ensemble: the mean of several predictors' probability maps (models trained with other
    ``base.seed``, or on other data). Each member predicts with its own preprocessing and settings;
    the maps, each at the image's own size, are averaged pixel by pixel. It answers
    :meth:`probabilities` and :meth:`probability` as :class:`Predictor` does, so the scorers
    (threshold choice, the cross-dataset matrix) take it in a predictor's place."""

    def __init__(self, members: Sequence[Predictor]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member predictor")
        self.members = list(members)

    def probabilities(
        self, images: Sequence[np.ndarray], preprocess: PreprocessParams | None = None
    ) -> list[np.ndarray]:
        """The members' mean probability map (H×W float32 in [0, 1]) for each image."""
        total = [p.astype(np.float32, copy=True) for p in self.members[0].probabilities(images, preprocess)]
        for member in self.members[1:]:
            for acc, p in zip(total, member.probabilities(images, preprocess), strict=True):
                acc += p
        return [acc / np.float32(len(self.members)) for acc in total]

    def probability(self, image: np.ndarray, preprocess: PreprocessParams | None = None) -> np.ndarray:
        """:meth:`probabilities` of one image."""
        return self.probabilities([image], preprocess)[0]
