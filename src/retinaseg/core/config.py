"""params.yaml -> typed, validated configuration.

The one loader every stage and test uses. Nothing else in ``src/`` reads params.yaml.
:func:`load_params` reads the file, and :func:`params_from_dict` checks every value against its
type and allowed range (pydantic v2, ``Field(ge=..., le=...)`` in the annotations below) and then
the rules that tie keys together (:func:`cross_field_problems`). Unknown keys, values of the wrong
type and values out of range are a :class:`ConfigError` that names the file, the dotted key, the
value and what is allowed, so a typo in ``dvc exp run -S train.epcohs=5`` or an impossible
``-S models.unet.depth=9`` fails before anything is computed.

The groups are plain dataclasses: constructing one in code (``PreprocessParams(size=64)``) does not
validate; values enter the pipeline through :func:`load_params`/:func:`params_from_dict`, which do.
The dataclass defaults are the values in params.yaml (``tests/test_config.py`` checks that, and
that every field is read somewhere), so code that has no params.yaml at hand (a pyfunc model being
served, ``retinaseg`` run outside a checkout) behaves like the pipeline.

Types are strict, the way the file is written: an integer key takes an integer only (``2.5`` and
``2.0`` are errors, so is ``true``), a number key takes an integer or a float (stored as a float;
NaN and infinities are refused), a boolean key takes ``true``/``false`` only, and a string key takes
a number as its text (``dvc exp run -S data.root=2024`` writes ``root: 2024``, an int in YAML 1.2:
the user meant the string; quote it, ``-S 'data.root="007"'``, to keep leading zeros).

The file is read as YAML 1.2, the way DVC writes it: ``dvc exp run -S train.lr=1e-5`` stores
``lr: 1e-05``, which YAML 1.2 reads as a float and PyYAML (YAML 1.1) as the string '1e-05'.
ruamel.yaml is DVC's own YAML library, so both read the file the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import AllowInfNan, BeforeValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from retinaseg.core.errors import RetinasegError

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(RetinasegError, ValueError):
    """A params file that cannot be turned into a :class:`Params`."""


def _number_as_text(value: Any) -> Any:
    """A YAML number given for a string key is that number's text (see the module docstring)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


# The value types of params.yaml. Strict: no silent conversions (a float for an integer key, 1 for
# true, "3" for a number are errors); an int for a number key is accepted and stored as a float.
Int = Annotated[int, Strict()]
Number = Annotated[float, Strict(), AllowInfNan(False)]
Bool = Annotated[bool, Strict()]
Text = Annotated[str, BeforeValidator(_number_as_text), Strict(), Field(min_length=1)]
Probability = Annotated[Number, Field(ge=0, le=1)]
Seed = Annotated[Int, Field(ge=0, le=2**32 - 1, description="numpy seeds are 32-bit")]

# A U-Net has `depth` down-sampling steps and doubles its channels at each: the bottleneck is
# base_channels * 2**depth channels wide and sees the input at 1 / 2**depth of its size.
MAX_UNET_DEPTH = 6
MAX_BOTTLENECK_CHANNELS = 2048  # the paper's U-Net (64 base channels, depth 4) has 1024
RESNET34_STRIDE = 32  # smp's ResNet34 encoder down-samples 5 times
MIN_IMAGE_SIZE = RESNET34_STRIDE
MIN_TTA_SCALE, MAX_TTA_SCALE = 0.25, 4.0  # evaluate.tta_scales: each a factor on preprocess.size
MAX_TTA_PASSES = 8  # evaluate.tta_scales: at most this many scales (each one is a pass of the model)
TTA_SCALES_RULE = f"1 to {MAX_TTA_PASSES} different numbers in [{MIN_TTA_SCALE:g}, {MAX_TTA_SCALE:g}]"
MAX_IMAGE_SIZE = 4096


def valid_tta_scales(values: object) -> bool:
    """Whether ``values`` is a list or tuple ``evaluate.tta_scales`` accepts (:data:`TTA_SCALES_RULE`),
    for scales that come from elsewhere (``retinaseg predict --tta-scales`` and the scripts' option)."""
    return (
        isinstance(values, list | tuple)
        and 1 <= len(values) <= MAX_TTA_PASSES
        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in values)
        and len(set(values)) == len(values)
        and all(MIN_TTA_SCALE <= x <= MAX_TTA_SCALE for x in values)
    )


@dataclass
class BaseParams:
    seed: Seed = 42
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # auto | [0, 64]; auto and 0 threads: this job's share of the cores (retinaseg.core.budget)
    workers: Literal["auto"] | Annotated[Int, Field(ge=0, le=64)] = "auto"
    threads: Annotated[Int, Field(ge=0, le=1024, description="0 = this job's share of the cores")] = 0
    # decoded training (and, apart, validation) images kept in RAM, shared among the loader's
    # processes (retinaseg.data.dataset); 0 = decode every item
    cache_mb: Annotated[Int, Field(ge=0, le=1_048_576, description="0 = no cache")] = 1024


# a dataset's name in params.yaml (a part of a multi dataset, a row of the cross-dataset matrix)
DatasetName = Annotated[Text, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
SingleSource = Literal["synthetic", "kaggle", "drive", "stare", "chase", "folder"]


@dataclass
class DataPartParams:
    """One dataset of a combined (``data.source: multi``) dataset: ``data.root/<path>``, read as
    ``source``; its sample ids are prefixed with ``<name>_``."""

    name: DatasetName
    source: SingleSource
    path: Text  # relative to data.root, inside it (checked in cross_field_problems)


@dataclass
class DataParams:
    # multi: several datasets in sub-folders of root, listed in parts (trained on together)
    source: Literal["synthetic", "kaggle", "drive", "stare", "chase", "folder", "multi"] = "synthetic"
    root: Text = "data/raw/synthetic"
    parts: list[DataPartParams] = field(default_factory=list)  # only (and required) with source: multi
    # the masks train and val learn from where a dataset has two observers: first | union (of both);
    # test is always scored against the first observer's
    train_labels: Literal["first", "union"] = "first"


@dataclass
class SyntheticParams:
    n_train: Annotated[Int, Field(ge=2, le=10_000, description="the split needs 2 to carve out val")] = 20
    n_test: Annotated[Int, Field(ge=0, le=10_000)] = 6
    size: Annotated[Int, Field(ge=32, le=MAX_IMAGE_SIZE)] = 256
    seed: Seed = 7


@dataclass
class ValidateParams:
    on_error: Literal["fail", "exclude"] = "fail"
    max_grey_fraction: Probability = 0.5
    size_outlier_warn: Bool = True


@dataclass
class SplitParams:
    # null: base.seed draws the split too; a number: the split's own seed, so that models trained
    # with different base.seed (a seed study, an ensemble) share one split, one val set, one test set
    seed: Seed | None = None
    val_fraction: Annotated[Number, Field(gt=0, lt=1, description="training needs val images")] = 0.2
    test_fraction: Annotated[Number, Field(ge=0, lt=1)] = 0.2
    phash_max_distance: Annotated[Int, Field(ge=0, le=64, description="a Hamming distance of 64 bits")] = 10


@dataclass
class PreprocessParams:
    size: Annotated[Int, Field(ge=MIN_IMAGE_SIZE, le=MAX_IMAGE_SIZE)] = 256
    # image: the longest side of the photograph -> size; fov: the field of view's bounding box (its
    # diameter) -> size, what lies outside it cropped away, so every camera's eye is the same size
    scale: Literal["image", "fov"] = "image"
    # none: the pixels as photographed; fov_standardise: each channel standardised inside the FOV
    # (mean 128, std 40 after), so exposure and colour cast differ less between cameras
    normalise: Literal["none", "fov_standardise"] = "none"
    clahe: Bool = False
    clahe_clip: Annotated[Number, Field(gt=0, le=100)] = 2.0
    clahe_tile: Annotated[Int, Field(ge=1, le=64)] = 8
    # rgb: the three colour channels; green: the green channel (after CLAHE when clahe is on) in all
    # three input channels: vessels contrast most in green and the camera's colour cast is gone
    channels: Literal["rgb", "green"] = "rgb"


@dataclass
class AugmentParams:
    hflip: Probability = 0.5
    vflip: Probability = 0.5
    rot90: Probability = 0.5
    rotate_limit: Annotated[Number, Field(ge=0, le=180, description="degrees")] = 15
    scale_limit: Annotated[Number, Field(ge=0, lt=1, description="scales 1 ± limit")] = 0.1
    brightness_contrast: Probability = 0.2
    gamma: Annotated[Number, Field(ge=0, lt=1, description="gamma 1 ± gamma")] = 0.2
    # another camera's colour: HueSaturationValue shifts of hue/saturation/value up to 20/30/20 · x
    hue_saturation: Annotated[Number, Field(ge=0, le=1, description="0 = off")] = 0.0
    # another camera's sharpness: a Gaussian blur (sigma up to 1.5 px) with this probability
    blur: Probability = 0.0
    # another camera's lighting: a brightness gradient or light falling off from a corner (up to ±20 %),
    # with this probability
    illumination: Probability = 0.0
    # another camera's sensor: Gaussian noise (sigma 1-4 % of the range), with this probability
    noise: Probability = 0.0
    # another camera's file format: JPEG re-compression at quality 40-90, with this probability
    jpeg: Probability = 0.0
    crop_size: Annotated[Int, Field(ge=0, le=MAX_IMAGE_SIZE, description="0 = whole image")] = 0


@dataclass
class LossParams:
    name: Literal["bce_dice", "focal_dice", "focal_tversky"] = "bce_dice"
    dice_weight: Annotated[Number, Field(ge=0, le=100)] = 1.0
    focal_alpha: Probability = 0.25
    focal_gamma: Annotated[Number, Field(ge=0, le=10)] = 2.0
    tversky_alpha: Probability = 0.7
    tversky_beta: Probability = 0.3
    tversky_gamma: Annotated[Number, Field(gt=0, le=10)] = 0.75


@dataclass
class TrainParams:
    epochs: Annotated[Int, Field(ge=1, le=10_000, description="a run of 0 epochs trains no model")] = 12
    batch_size: Annotated[Int, Field(ge=1, le=1024)] = 4
    samples_per_epoch: Annotated[Int, Field(ge=0, le=10**9, description="0 = one pass")] = 0
    optimizer: Literal["adam", "adamw"] = "adamw"
    lr: Annotated[Number, Field(ge=0)] = 3e-3
    weight_decay: Annotated[Number, Field(ge=0)] = 1e-4
    scheduler: Literal["cosine", "plateau", "none"] = "cosine"
    warmup_epochs: Annotated[Int, Field(ge=0, le=10_000)] = 1
    early_stopping_patience: Annotated[Int, Field(ge=0, le=10_000, description="0 = off")] = 20
    grad_clip: Annotated[Number, Field(ge=0, description="0 = off")] = 1.0
    amp: Bool = True
    channels_last: Bool = True
    compile: Bool = False
    resume: Literal["auto", "never"] = "auto"
    loss: LossParams = field(default_factory=LossParams)


# models.<unet | attention_unet>.norm: the layer after each convolution (retinaseg.models.unet.conv_norm)
UNetNorm = Literal["batch", "instance", "none"]
UNET_NORMS: tuple[str, ...] = typing.get_args(UNetNorm)


@dataclass
class UNetParams:
    base_channels: Annotated[Int, Field(ge=1, le=256)] = 16
    depth: Annotated[
        Int,
        Field(
            ge=1, le=MAX_UNET_DEPTH, description="each step doubles the channels: deeper runs out of memory"
        ),
    ] = 4
    norm: UNetNorm = "batch"
    dropout: Annotated[Number, Field(ge=0, lt=1)] = 0.0


@dataclass
class ResNet34UNetParams:
    encoder_weights: Text | None = None


@dataclass
class ModelsParams:
    unet: UNetParams = field(default_factory=UNetParams)
    attention_unet: UNetParams = field(default_factory=UNetParams)
    resnet34_unet: ResNet34UNetParams = field(default_factory=ResNet34UNetParams)


@dataclass
class EvaluateParams:
    tile_size: Annotated[Int, Field(ge=MIN_IMAGE_SIZE, le=4 * MAX_IMAGE_SIZE)] = 1024
    tile_overlap: Annotated[Number, Field(ge=0, lt=1)] = 0.25
    tta: Bool = False
    # input scales whose probability maps are averaged (multi-scale test-time augmentation); [1.0] = off
    tta_scales: Annotated[
        list[Annotated[Number, Field(ge=MIN_TTA_SCALE, le=MAX_TTA_SCALE)]],
        Field(min_length=1, max_length=MAX_TTA_PASSES),
    ] = field(default_factory=lambda: [1.0])
    # auto: mixed precision (bf16, else fp16) on CUDA, fp32 elsewhere; fp32: full precision everywhere
    precision: Literal["auto", "fp32"] = "auto"
    bootstrap: Annotated[Int, Field(ge=0, le=100_000, description="0 = no interval")] = 1000
    n_overlays: Annotated[Int, Field(ge=0, le=1000)] = 3
    curve_points: Annotated[Int, Field(ge=2, le=100_000)] = 200


@dataclass
class DatasetParams:
    """One dataset of the cross-dataset matrix (``datasets:`` in params.yaml)."""

    name: Annotated[Text, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    source: Literal["synthetic", "kaggle", "drive", "stare", "chase", "folder"]
    root: Text


def _default_datasets() -> list[DatasetParams]:
    return [DatasetParams(name="synthetic", source="synthetic", root="data/raw/synthetic")]


# the scores compare can rank on (the FOV block of an evaluate metrics file)
CompareMetric = Literal[
    "f1", "iou", "auc_roc", "auc_pr", "mcc", "sensitivity", "specificity", "accuracy", "precision"
]


@dataclass
class CompareParams:
    metric: CompareMetric = "f1"


@dataclass
class MlflowParams:
    experiment: Text = "retinaseg"
    registered_model: Text = "retinaseg-vessels"


@dataclass
class RegistryParams:
    # auto: `dvc repro` outside an experiment promotes the new best model to @champion when it beats
    # the current champion on the same test data; never: register versions only. An experiment
    # (`dvc exp run`) never moves @champion; `retinaseg promote` does, on purpose.
    promote: Literal["auto", "never"] = "auto"


@dataclass
class Params:
    base: BaseParams = field(default_factory=BaseParams)
    data: DataParams = field(default_factory=DataParams)
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    split: SplitParams = field(default_factory=SplitParams)
    preprocess: PreprocessParams = field(default_factory=PreprocessParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    train: TrainParams = field(default_factory=TrainParams)
    models: ModelsParams = field(default_factory=ModelsParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    compare: CompareParams = field(default_factory=CompareParams)
    mlflow: MlflowParams = field(default_factory=MlflowParams)
    registry: RegistryParams = field(default_factory=RegistryParams)
    datasets: Annotated[list[DatasetParams], Field(min_length=1)] = field(default_factory=_default_datasets)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def split_seed(self) -> int:
        """The seed that draws the train/val/test split: ``split.seed``, else ``base.seed``."""
        return self.base.seed if self.split.seed is None else self.split.seed

    def flat(self, *groups: str) -> dict[str, Any]:
        """Flattened ``{"train.loss.name": ...}``; only the named groups when given."""
        data = self.to_dict()
        if groups:
            data = {g: _lookup(data, g) for g in groups}
        return flatten(data)

    def model_params(self, name: str) -> dict[str, Any]:
        """The ``models.<name>`` group as a plain dict (for the model factory)."""
        if name not in MODEL_NAMES:
            raise ConfigError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
        return dataclasses.asdict(getattr(self.models, name))


MODEL_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ModelsParams))
UNET_NAMES: tuple[str, ...] = ("unet", "attention_unet")  # the models.<name> groups of UNetParams


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node[part]
    return node


# ----------------------------------------------------------------------------- cross-field rules


def cross_field_problems(p: Params) -> list[str]:
    """The rules between keys that one key's range cannot express; each problem names its keys.

    Run by :func:`params_from_dict` after every key has its type and range.
    """
    problems: list[str] = []
    if p.split.val_fraction + p.split.test_fraction >= 1:
        problems.append(
            f"'split.val_fraction' + 'split.test_fraction' is {p.split.val_fraction} + "
            f"{p.split.test_fraction} = {p.split.val_fraction + p.split.test_fraction:g}; must be below 1 "
            "(train keeps the rest)"
        )
    if p.train.warmup_epochs > p.train.epochs:
        problems.append(
            f"'train.warmup_epochs' is {p.train.warmup_epochs}, more than 'train.epochs' {p.train.epochs}"
        )
    loss = p.train.loss
    if loss.tversky_alpha + loss.tversky_beta <= 0:
        problems.append(
            "'train.loss.tversky_alpha' + 'train.loss.tversky_beta' is 0; at least one must be positive "
            "(they weigh the false negatives and false positives)"
        )
    size, crop = p.preprocess.size, p.augment.crop_size
    if crop > size:
        problems.append(
            f"'augment.crop_size' is {crop}, larger than 'preprocess.size' {size} (the images it crops)"
        )
    for name in UNET_NAMES:
        net: UNetParams = getattr(p.models, name)
        scale = 2**net.depth
        width = net.base_channels * scale
        if width > MAX_BOTTLENECK_CHANNELS:
            problems.append(
                f"'models.{name}.base_channels' {net.base_channels} with 'models.{name}.depth' {net.depth} "
                f"gives a bottleneck of {net.base_channels} * 2**{net.depth} = {width} channels; at most "
                f"{MAX_BOTTLENECK_CHANNELS} (lower one of them)"
            )
        for key, side in (("preprocess.size", size), ("augment.crop_size", crop)):
            if 0 < side < scale:
                problems.append(
                    f"'{key}' is {side}, smaller than 2**'models.{name}.depth' = 2**{net.depth} = {scale}: "
                    f"the U-Net halves its input {net.depth} times (raise {key} or lower the depth)"
                )
    scales = p.evaluate.tta_scales
    if len(set(scales)) < len(scales):
        problems.append(f"'evaluate.tta_scales' {scales} repeats a scale; each one is a pass of the model")
    problems += _data_part_problems(p.data)
    names = [d.name for d in p.datasets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        problems.append(
            f"'datasets' names {', '.join(map(repr, repeated))} more than once; each name labels one row"
        )
    return problems


def _data_part_problems(data: DataParams) -> list[str]:
    """``data.parts``: required with (and only with) ``data.source: multi``; unique names; each path a
    folder inside ``data.root`` (relative, no ``..``), no part inside another."""
    if data.source != "multi":
        if data.parts:
            return [
                f"'data.parts' lists {len(data.parts)} part(s) but 'data.source' is {data.source!r}; parts "
                "are read only with data.source: multi (set 'data.parts' to [] or 'data.source' to multi)"
            ]
        return []
    if not data.parts:
        return [
            "'data.parts' is empty but 'data.source' is 'multi'; list at least one part "
            "(name, source, path under 'data.root')"
        ]
    problems: list[str] = []
    names = [part.name for part in data.parts]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        problems.append(
            f"'data.parts' names {', '.join(map(repr, repeated))} more than once; a name prefixes its "
            "part's sample ids, so each must be unique"
        )
    paths: list[tuple[int, PurePosixPath]] = []
    for index, part in enumerate(data.parts):
        path = PurePosixPath(part.path.replace("\\", "/"))
        parts = [segment for segment in path.parts if segment != "."]
        if path.is_absolute() or ".." in parts or not parts or PureWindowsPath(part.path).drive:
            problems.append(
                f"'data.parts[{index}].path' is {part.path!r}; it must be a folder inside 'data.root' "
                "(relative to it, without '..', not the root itself)"
            )
            continue
        clean = PurePosixPath(*parts)
        for other_index, other in paths:
            if clean == other or clean.is_relative_to(other) or other.is_relative_to(clean):
                problems.append(
                    f"'data.parts[{index}].path' {part.path!r} overlaps 'data.parts[{other_index}].path' "
                    f"{data.parts[other_index].path!r}; each part is its own folder (none scanned twice)"
                )
        paths.append((index, clean))
    return problems


# ----------------------------------------------------------------------------- validation


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _groups(cls: type = Params) -> Iterator[type]:
    """``Params`` and every group dataclass under it."""
    yield cls
    for annotation in _hints(cls).values():
        inner = _list_item(annotation)
        if dataclasses.is_dataclass(inner):
            yield from _groups(inner)


def _list_item(annotation: Any) -> Any:
    """``list[T]`` (possibly ``Annotated``) → ``T``; anything else unchanged."""
    bare = _bare(annotation)
    return typing.get_args(bare)[0] if typing.get_origin(bare) is list else bare


@functools.cache
def _adapter() -> TypeAdapter:
    for group in _groups():  # unknown keys are errors, in every group (pydantic's per-class config)
        group.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
    return TypeAdapter(Params)


def _bare(annotation: Any) -> Any:
    """``Annotated[T, ...]`` → ``T``; anything else unchanged."""
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation


def _field_annotation(loc: tuple[Any, ...]) -> tuple[list[str], Any, type | None]:
    """The field names along a pydantic error location, the annotation of the last one, and the
    dataclass holding it (union member tags and other non-field parts of ``loc`` are dropped)."""
    names: list[str] = []
    cls: Any = Params
    annotation: Any = Params
    owner: type | None = None
    for part in loc:
        if isinstance(part, int) and names and typing.get_origin(_bare(annotation)) is list:
            names[-1] += f"[{part}]"  # datasets[1].root, evaluate.tta_scales[0]
            annotation = _list_item(annotation)  # the item's type, with its range
            cls = _bare(annotation)
            continue
        if not (isinstance(part, str) and dataclasses.is_dataclass(cls)):
            break
        hints = _hints(cls)
        if part not in hints:
            names.append(part)  # an unknown key
            owner, annotation = cls, None
            break
        names.append(part)
        owner, annotation = cls, hints[part]
        cls = _bare(annotation)
    return names, annotation, owner


def _constraints(annotation: Any) -> tuple[dict[str, Any], str | None]:
    """``{"ge": 1, "le": 6}`` and the description from an ``Annotated[...]`` field type."""
    bounds: dict[str, Any] = {}
    description = None
    for meta in typing.get_args(annotation)[1:] if typing.get_origin(annotation) is Annotated else ():
        items = meta.metadata if isinstance(meta, FieldInfo) else [meta]
        if isinstance(meta, FieldInfo) and meta.description:
            description = meta.description
        for item in items:
            for kind in ("ge", "gt", "le", "lt"):
                if isinstance(item, getattr(annotated_types, kind.capitalize())):
                    bounds[kind] = getattr(item, kind)
    return bounds, description


def allowed_range(annotation: Any) -> str:
    """``"[1, 6]"``, ``"[0, 1)"``, ``">= 0"``: the range in an ``Annotated[...]`` field type."""
    bounds, _ = _constraints(annotation)
    low = ("[", bounds["ge"]) if "ge" in bounds else ("(", bounds["gt"]) if "gt" in bounds else None
    high = (bounds["le"], "]") if "le" in bounds else (bounds["lt"], ")") if "lt" in bounds else None
    if low and high:
        return f"{low[0]}{low[1]}, {high[0]}{high[1]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]}"
    if high:
        return f"{'<=' if high[1] == ']' else '<'} {high[0]}"
    return "any"


def _type_words(annotation: Any) -> str:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return f"{_type_words(inner[0])} or null"
    base = _bare(annotation)
    if typing.get_origin(base) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(base))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(base, "valid")


_TYPE_ERRORS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string",
}  # fmt: skip
_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
# keys that were renamed, by the group that held them: the unknown-key message says what replaced them
_RENAMED_KEYS: dict[type, dict[str, str]] = {
    UNetParams: {"batch_norm": "batch_norm was renamed norm: true is now norm: batch, false is norm: none"},
}


def _describe(errors: list[dict[str, Any]]) -> list[str]:
    """One message per key from pydantic's errors, in the loader's words."""
    messages: list[str] = []
    unknown: dict[tuple[str, ...], list[str]] = {}
    seen: set[str] = set()
    # a union (``str | None``) reports once per member: keep the error of the non-null member
    errors = [e for e in errors if e["type"] != "none_required"] or errors
    for err in errors:
        names, annotation, owner = _field_annotation(tuple(err["loc"]))
        key = ".".join(names)
        value = err.get("input")
        kind = err["type"]
        if kind == "unexpected_keyword_argument" or (annotation is None and owner is not None):
            unknown.setdefault(tuple(names[:-1]), []).append(key)
            continue
        if key in seen:
            continue  # a union reports once per member
        seen.add(key)
        where = f"'{key}'" if key else "the params"
        if kind in ("dataclass_type", "dataclass_args_type", "model_type", "dict_type"):
            messages.append(f"{where} must be a mapping of keys, got {value!r}")
        elif kind == "finite_number":
            messages.append(f"{where} must be a finite number, got {value!r}")
        elif kind in _RANGE_ERRORS:
            _, description = _constraints(annotation)
            note = f" ({description})" if description else ""
            messages.append(f"{where} is {value!r}; allowed range {allowed_range(annotation)}{note}")
        elif kind == "literal_error":
            messages.append(f"{where} is {value!r}; expected {_type_words(annotation)}")
        elif kind == "missing":
            messages.append(f"{where} is missing")
        elif kind == "string_pattern_mismatch":
            pattern = (err.get("ctx") or {}).get("pattern", "")
            messages.append(f"{where} is {value!r}; it must match {pattern} (letters, digits, _ . -)")
        elif kind == "list_type":
            messages.append(f"{where} must be a list, got {value!r}")
        elif kind in ("string_too_short", "too_short"):
            messages.append(f"{where} must not be empty")
        elif typing.get_origin(annotation) in (typing.Union, types.UnionType):
            messages.append(f"{where} must be {_type_words(annotation)}, got {value!r}")
        elif kind in _TYPE_ERRORS:
            messages.append(f"{where} must be {_TYPE_ERRORS[kind]}, got {value!r}")
        else:
            messages.append(f"{where}: {err['msg']}, got {value!r}")
    for parent, keys in unknown.items():
        cls: Any = Params
        for part in parent:
            cls = _list_item(_hints(cls)[part.split("[")[0]])  # datasets[1] → DatasetParams
        known = ", ".join(f.name for f in dataclasses.fields(cls))
        renamed = _RENAMED_KEYS.get(cls, {})
        hint = "".join(f" ({renamed[k.rsplit('.', 1)[-1]]})" for k in keys if k.rsplit(".", 1)[-1] in renamed)
        messages.insert(0, f"unknown key(s) {', '.join(keys)}; known keys here: {known}{hint}")
    return messages


def _check_keys(data: Any, prefix: str = "") -> None:
    """Keys must be strings (YAML allows ``1: x`` or ``null: x``); raised before pydantic sees them."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"key {key!r}{' in ' + repr(prefix) if prefix else ''} is not a name")
        _check_keys(value, f"{prefix}.{key}" if prefix else key)


def params_from_dict(data: dict[str, Any], source: str = "<dict>") -> Params:
    """Build :class:`Params` from a nested dict; missing keys take the defaults above.

    Every value is checked against its type and range, then :func:`cross_field_problems`;
    :class:`ConfigError` lists every problem, each naming its key.
    """
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping of groups, got {data!r}")
    try:
        _check_keys(data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        params = _adapter().validate_python(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: " + "; ".join(_describe(exc.errors()))) from None
    problems = cross_field_problems(params)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return params


def parse_params_text(text: str) -> Any:
    """Parse params YAML as DVC does (``YAML(typ="safe")``: YAML 1.2 types; pure Python, same result)."""
    return YAML(typ="safe", pure=True).load(text) or {}


def yaml_error_line(exc: YAMLError) -> str:
    """One line for a YAML parser error: where (1-based line and column) and what, with the
    construct it was reading and where that began (ruamel's str() spans several lines and
    quotes the source, which a one-line `error:` message cannot hold)."""
    problem = getattr(exc, "problem", None)
    if not problem:
        return " ".join(str(exc).split())
    where = ""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        where = f"line {mark.line + 1}, column {mark.column + 1}: "
    context = getattr(exc, "context", None)
    if context:
        cmark = getattr(exc, "context_mark", None)
        problem += f" ({context}{f' that began on line {cmark.line + 1}' if cmark is not None else ''})"
    return where + problem


def load_params(path: str | Path = DEFAULT_PARAMS, overrides: dict[str, Any] | None = None) -> Params:
    """Load ``params.yaml`` (or another file) with optional dotted overrides.

    ``overrides={"train.epochs": 1}`` is how tests shrink the real config.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the params file: {exc}") from None
    try:
        data = parse_params_text(text)
    except YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {yaml_error_line(exc)}") from None
    except ValueError as exc:  # ruamel's YAML 1.2 resolver takes e.g. `._` for a float, then fails on it
        raise ConfigError(f"{path}: not valid YAML: a scalar cannot be read ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of groups")
    for dotted, value in (overrides or {}).items():
        node = data
        parts = dotted.split(".")
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                group = ".".join(parts[: i + 1])
                raise ConfigError(f"{path}: override {dotted!r}: '{group}' is not a group of keys")
        node[parts[-1]] = value
    return params_from_dict(data, str(path))
