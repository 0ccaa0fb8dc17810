"""params.yaml -> typed configuration.

The one loader every stage and test uses. Nothing else in ``src/`` reads params.yaml.
Unknown keys, missing keys and values of the wrong type are errors that name the file
and the dotted key, so a typo in ``dvc exp run -S train.epcohs=5`` fails loudly.

The dataclass defaults below are the values in params.yaml (``tests/test_config.py`` checks
that, and that every field is read somewhere), so code that has no params.yaml at hand (a
pyfunc model being served, ``retinaseg`` run outside a checkout) behaves like the pipeline.

The file is read as YAML 1.2, the way DVC writes it: ``dvc exp run -S train.lr=1e-5`` stores
``lr: 1e-05``, which YAML 1.2 reads as a float and PyYAML (YAML 1.1) as the string '1e-05'.
ruamel.yaml is DVC's own YAML library, so both read the file the same way.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from retinaseg.core.errors import RetinasegError

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(RetinasegError, ValueError):
    """A params file that cannot be turned into a :class:`Params`."""


@dataclass
class BaseParams:
    seed: int = 42
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    workers: int = 0
    threads: int = 0


@dataclass
class DataParams:
    source: Literal["synthetic", "kaggle", "drive", "stare", "chase", "folder"] = "synthetic"
    root: str = "data/raw/synthetic"


@dataclass
class SyntheticParams:
    n_train: int = 20
    n_test: int = 6
    size: int = 256
    seed: int = 7


@dataclass
class ValidateParams:
    on_error: Literal["fail", "exclude"] = "fail"
    max_grey_fraction: float = 0.5
    size_outlier_warn: bool = True


@dataclass
class SplitParams:
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    phash_max_distance: int = 10


@dataclass
class PreprocessParams:
    size: int = 256
    clahe: bool = False
    clahe_clip: float = 2.0
    clahe_tile: int = 8


@dataclass
class AugmentParams:
    hflip: float = 0.5
    vflip: float = 0.5
    rot90: float = 0.5
    rotate_limit: float = 15
    scale_limit: float = 0.1
    brightness_contrast: float = 0.2
    gamma: float = 0.2
    crop_size: int = 0


@dataclass
class LossParams:
    name: Literal["bce_dice", "focal_dice", "focal_tversky"] = "bce_dice"
    dice_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    tversky_alpha: float = 0.7
    tversky_beta: float = 0.3
    tversky_gamma: float = 0.75


@dataclass
class TrainParams:
    epochs: int = 12
    batch_size: int = 4
    samples_per_epoch: int = 0
    optimizer: Literal["adam", "adamw"] = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-4
    scheduler: Literal["cosine", "plateau", "none"] = "cosine"
    warmup_epochs: int = 1
    early_stopping_patience: int = 20
    grad_clip: float = 1.0
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    resume: Literal["auto", "never"] = "auto"
    loss: LossParams = field(default_factory=LossParams)


@dataclass
class UNetParams:
    base_channels: int = 16
    depth: int = 4
    batch_norm: bool = True
    dropout: float = 0.0


@dataclass
class ResNet34UNetParams:
    encoder_weights: str | None = None


@dataclass
class ModelsParams:
    unet: UNetParams = field(default_factory=UNetParams)
    attention_unet: UNetParams = field(default_factory=UNetParams)
    resnet34_unet: ResNet34UNetParams = field(default_factory=ResNet34UNetParams)


@dataclass
class EvaluateParams:
    tile_size: int = 1024
    tile_overlap: float = 0.25
    tta: bool = False
    bootstrap: int = 1000
    n_overlays: int = 3
    curve_points: int = 200


@dataclass
class CompareParams:
    metric: str = "f1"


@dataclass
class MlflowParams:
    experiment: str = "retinaseg"
    registered_model: str = "retinaseg-vessels"


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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


def _coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return _build(annotation, value, key, source)
    if origin is Literal:
        if value not in args:
            allowed = " | ".join(repr(a) for a in args)
            raise ConfigError(f"{source}: '{key}' is {value!r}; expected {allowed}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, source)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: '{key}' must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            # `dvc exp run -S data.root=2024` writes `root: 2024`, an int in YAML 1.2: the user
            # meant the string (quote it, -S 'data.root="007"', to keep leading zeros)
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{source}: '{key}' must be a string, got {value!r}")
        return value
    return value


def _build(cls: type, data: dict[str, Any], prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(where + u for u in unknown)}; "
            f"known keys here: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name in names:
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], key, source)
    return cls(**kwargs)


def params_from_dict(data: dict[str, Any], source: str = "<dict>") -> Params:
    """Build :class:`Params` from a nested dict; missing keys take the defaults above."""
    return _build(Params, data or {}, "", source)


def parse_params_text(text: str) -> Any:
    """Parse params YAML as DVC does (``YAML(typ="safe")``: YAML 1.2 types; pure Python, same result)."""
    return YAML(typ="safe", pure=True).load(text) or {}


def load_params(path: str | Path = DEFAULT_PARAMS, overrides: dict[str, Any] | None = None) -> Params:
    """Load ``params.yaml`` (or another file) with optional dotted overrides.

    ``overrides={"train.epochs": 1}`` is how tests shrink the real config.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    try:
        data = parse_params_text(text)
    except YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of groups")
    for dotted, value in (overrides or {}).items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return params_from_dict(data, str(path))
