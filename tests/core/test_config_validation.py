"""Every param is validated when it is loaded: type, range, cross-field rules, unknown keys (issue 11).

Errors are ``ConfigError``s that name the file, the dotted key, the value and what is allowed; a
fuzz test throws random values of random types at every key and expects nothing but a ``Params``
or a ``ConfigError``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import re
import typing

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from retinaseg.core.config import (
    MAX_BOTTLENECK_CHANNELS,
    MAX_UNET_DEPTH,
    ConfigError,
    Params,
    _constraints,
    _hints,
    allowed_range,
    flatten,
    load_params,
    params_from_dict,
)
from retinaseg.core.errors import RetinasegError
from retinaseg.models.factory import build_model
from tests.tiny import nested


def _load(**dotted):
    return params_from_dict(nested(dotted), source="params.yaml")


def _fields() -> dict[str, typing.Any]:
    """``{"train.loss.name": <annotation>}`` for every leaf key."""
    out = {}

    def walk(cls, prefix):
        for name, annotation in _hints(cls).items():
            bare = (
                typing.get_args(annotation)[0]
                if typing.get_origin(annotation) is typing.Annotated
                else annotation
            )
            if dataclasses.is_dataclass(bare):
                walk(bare, f"{prefix}{name}.")
            else:
                out[f"{prefix}{name}"] = annotation

    walk(Params, "")
    return out


FIELDS = _fields()


def _base_type(annotation) -> typing.Any:
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation


# --------------------------------------------------------------------------- the examples


BAD = [  # (overrides, the message part that names the key, the value and what is allowed)
    ({"models.unet.depth": 9}, "'models.unet.depth' is 9; allowed range [1, 6] (each step doubles"),
    ({"models.attention_unet.depth": 0}, "'models.attention_unet.depth' is 0; allowed range [1, 6]"),
    ({"train.batch_size": 0}, "'train.batch_size' is 0; allowed range [1, 1024]"),
    ({"train.epochs": 0}, "'train.epochs' is 0; allowed range [1, 10000] (a run of 0 epochs"),
    ({"train.epochs": -1}, "'train.epochs' is -1; allowed range [1, 10000]"),
    ({"split.val_fraction": 1.5}, "'split.val_fraction' is 1.5; allowed range (0, 1)"),
    (
        {"split.val_fraction": 0.5, "split.test_fraction": 0.5},
        "'split.val_fraction' + 'split.test_fraction' is 0.5 + 0.5 = 1; must be below 1",
    ),
    (
        {"preprocess.size": 48, "models.unet.depth": 6},
        "'preprocess.size' is 48, smaller than 2**'models.unet.depth' = 2**6 = 64",
    ),
    ({"augment.crop_size": 8}, "'augment.crop_size' is 8, smaller than 2**'models.unet.depth' = 2**4 = 16"),
    ({"augment.crop_size": 512}, "'augment.crop_size' is 512, larger than 'preprocess.size' 256"),
    ({"augment.hflip": 1.5}, "'augment.hflip' is 1.5; allowed range [0, 1]"),
    ({"augment.vflip": -0.1}, "'augment.vflip' is -0.1; allowed range [0, 1]"),
    ({"augment.rot90": 2}, "'augment.rot90' is 2; allowed range [0, 1]"),
    ({"evaluate.tile_overlap": 1.0}, "'evaluate.tile_overlap' is 1.0; allowed range [0, 1)"),
    ({"evaluate.tile_overlap": -0.25}, "'evaluate.tile_overlap' is -0.25; allowed range [0, 1)"),
    ({"train.lr": -0.001}, "'train.lr' is -0.001; allowed range >= 0"),
    ({"train.weight_decay": -1}, "'train.weight_decay' is -1; allowed range >= 0"),
    ({"train.lr": math.inf}, "'train.lr' must be a finite number, got inf"),
    ({"train.warmup_epochs": 13}, "'train.warmup_epochs' is 13, more than 'train.epochs' 12"),
    (
        {"models.unet.base_channels": 128, "models.unet.depth": 5},
        "'models.unet.base_channels' 128 with 'models.unet.depth' 5 gives a bottleneck of 128 * 2**5 = 4096 "
        "channels; at most 2048",
    ),
    (
        {"train.loss.tversky_alpha": 0, "train.loss.tversky_beta": 0},
        "'train.loss.tversky_alpha' + 'train.loss.tversky_beta' is 0",
    ),
    ({"train.batch_size": 2.5}, "'train.batch_size' must be an integer, got 2.5"),
    ({"train.batch_size": 2.0}, "'train.batch_size' must be an integer, got 2.0"),
    ({"train.batch_size": True}, "'train.batch_size' must be an integer, got True"),
    ({"train.lr": "0.1"}, "'train.lr' must be a number, got '0.1'"),
    ({"train.amp": 1}, "'train.amp' must be true or false, got 1"),
    ({"base.device": "tpu"}, "'base.device' is 'tpu'; expected 'auto' | 'cpu' | 'cuda' | 'mps'"),
    ({"compare.metric": "dice"}, "'compare.metric' is 'dice'; expected 'f1' | 'iou'"),
    ({"data.root": ""}, "'data.root' must not be empty"),
    (
        {"models.resnet34_unet.encoder_weights": ""},
        "'models.resnet34_unet.encoder_weights' must not be empty",
    ),
    (
        {"models.resnet34_unet.encoder_weights": [1]},
        "'models.resnet34_unet.encoder_weights' must be a string or null, got [1]",
    ),
    ({"train.loss": 3}, "'train.loss' must be a mapping of keys, got 3"),
    ({"train.epcohs": 5}, "unknown key(s) train.epcohs; known keys here: epochs, batch_size"),
    ({"models.unet.norm": "group"}, "'models.unet.norm' is 'group'; expected 'batch' | 'instance' | 'none'"),
    ({"evaluate.tta_scales": []}, "'evaluate.tta_scales' must not be empty"),
    ({"evaluate.tta_scales": 1.0}, "'evaluate.tta_scales' must be a list, got 1.0"),
    ({"evaluate.tta_scales": [1.0, 5]}, "'evaluate.tta_scales[1]' is 5; allowed range [0.25, 4.0]"),
    ({"evaluate.tta_scales": [0.1]}, "'evaluate.tta_scales[0]' is 0.1; allowed range [0.25, 4.0]"),
    ({"evaluate.tta_scales": ["1"]}, "'evaluate.tta_scales[0]' must be a number, got '1'"),
    (
        {"evaluate.tta_scales": [0.85, 1, 1.0]},
        "'evaluate.tta_scales' [0.85, 1.0, 1.0] repeats a scale; each one is a pass of the model",
    ),
    (  # the key norm replaced: the message says what to write instead
        {"models.attention_unet.batch_norm": False},
        "unknown key(s) models.attention_unet.batch_norm; known keys here: base_channels, depth, norm, "
        "dropout (batch_norm was renamed norm: true is now norm: batch, false is norm: none)",
    ),
]


@pytest.mark.parametrize("overrides, message", BAD)
def test_bad_values_are_config_errors_naming_key_value_and_range(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        _load(**overrides)
    assert str(info.value).startswith("params.yaml: ")
    assert isinstance(info.value, RetinasegError) and isinstance(info.value, ValueError)


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as info:
        _load(**{"train.epochs": 0, "augment.hflip": 2, "train.nope": 1})
    text = str(info.value)
    assert "'train.epochs' is 0" in text and "'augment.hflip' is 2" in text and "train.nope" in text


def test_load_params_names_the_file_and_the_key(repo_root, tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((repo_root / "params.yaml").read_text().replace("depth: 4", "depth: 9", 1))
    with pytest.raises(ConfigError, match=rf"^{path}: 'models.unet.depth' is 9; allowed range \[1, 6\]"):
        load_params(path)
    with pytest.raises(ConfigError, match="override 'train.epochs.x': 'train.epochs' is not a group"):
        load_params(repo_root / "params.yaml", {"train.epochs.x": 1})
    path.write_text("1: 2\n")
    with pytest.raises(ConfigError, match="key 1 is not a name"):
        load_params(path)


@pytest.mark.parametrize(
    ("text", "where_and_what"),
    [
        ("train:\n  epochs: 3: 4\n", "line 2, column 12: mapping values are not allowed here"),
        (
            "train:\n  epochs: 3\n lr: 0.1\n",
            "line 3, column 2: expected <block end>, but found '<block mapping start>' "
            "(while parsing a block mapping that began on line 1)",
        ),
        (
            'train:\n  optimizer: "adam\n',
            "line 3, column 1: found unexpected end of stream "
            "(while scanning a quoted scalar that began on line 2)",
        ),
    ],
)
def test_yaml_that_does_not_parse_is_one_line_naming_file_line_and_column(text, where_and_what, tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_params(path)
    assert str(raised.value) == f"{path}: not valid YAML: {where_and_what}"


def test_good_values_and_conversions():
    params = _load(
        **{"train.lr": 1, "augment.rotate_limit": 0, "models.unet.depth": 6, "preprocess.size": 64,
           "augment.crop_size": 64, "models.unet.base_channels": 32, "data.root": 2024,
           "models.resnet34_unet.encoder_weights": None, "split.val_fraction": 0.5,
           "split.test_fraction": 0.49, "train.warmup_epochs": 12, "train.weight_decay": 0,
           "evaluate.tta_scales": [0.85, 1, 1.15]}
    )  # fmt: skip
    assert params.evaluate.tta_scales == [0.85, 1.0, 1.15]
    assert all(isinstance(x, float) for x in params.evaluate.tta_scales)
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)
    assert params.train.weight_decay == 0.0 and isinstance(params.train.weight_decay, float)
    assert params.data.root == "2024" and params.models.unet.base_channels * 2**6 == MAX_BOTTLENECK_CHANNELS


# --------------------------------------------------------------------------- every field


def test_every_number_has_a_range():
    """Every int and float key states its allowed range (a key without one would accept anything)."""
    missing = [k for k, a in FIELDS.items() if _base_type(a) in (int, float) and allowed_range(a) == "any"]
    assert missing == []


@pytest.mark.parametrize("key", sorted(k for k, a in FIELDS.items() if _base_type(a) in (int, float)))
def test_just_outside_every_range_is_refused(key):
    annotation = FIELDS[key]
    bounds, _ = _constraints(annotation)
    step = 1 if _base_type(annotation) is int else 1e-9
    outside = []
    if "ge" in bounds:
        outside.append(bounds["ge"] - step)
    if "gt" in bounds:
        outside.append(bounds["gt"])
    if "le" in bounds:
        outside.append(bounds["le"] + step)
    if "lt" in bounds:
        outside.append(bounds["lt"])
    for value in outside:
        message = f"'{key}' is {value!r}; allowed range {allowed_range(annotation)}"
        with pytest.raises(ConfigError, match=re.escape(message)):
            _load(**{key: value})


@pytest.mark.parametrize("name", ["unet", "attention_unet"])
def test_the_smallest_allowed_inputs_of_the_deepest_unet_train(name):
    """depth 6 (the maximum) at size 2**6 (the smallest the loader allows for it) trains a step."""
    params = _load(
        **{f"models.{name}.depth": MAX_UNET_DEPTH, f"models.{name}.base_channels": 1, "preprocess.size": 64}
    )
    model = build_model(name, params.model_params(name))
    out = model(torch.zeros(2, 3, params.preprocess.size, params.preprocess.size))
    out.mean().backward()
    assert out.shape == (2, 1, 64, 64)


# --------------------------------------------------------------------------- fuzz

_KEYS = sorted(FIELDS)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(
        ["auto", "cpu", "bce_dice", "cosine", "f1", "imagenet", "synthetic", "0", "1e-3", "true"]
    )
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def _typed(key: str) -> st.SearchStrategy:
    """Values of the key's own type around its range: most draws are close calls, many valid."""
    base = _base_type(FIELDS[key])
    if typing.get_origin(base) is typing.Literal:
        return st.sampled_from([*typing.get_args(base), "other"])
    if base is bool:
        return st.booleans()
    if base is int:
        return st.integers(min_value=-2, max_value=300)
    if base is float:
        return st.floats(min_value=-0.5, max_value=2.0) | st.integers(min_value=0, max_value=20)
    return st.text(max_size=10) | st.none()


_key_value = st.sampled_from(_KEYS).flatmap(
    lambda k: st.tuples(st.just(k), st.one_of(_typed(k), _typed(k), _values))
)
_anything = st.tuples(
    st.sampled_from(sorted({k.split(".")[0] for k in _KEYS})) | st.text(max_size=8), _values
)  # a whole group replaced, or an unknown key
_dotted = st.lists(st.one_of(_key_value, _key_value, _anything), max_size=6).map(dict)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _nested_or_none(dotted: dict) -> dict | None:
    try:
        return nested({k: v for k, v in dotted.items() if k and all(k.split("."))})
    except (AttributeError, TypeError):
        return None  # a key both a group and a leaf in one draw: not a document anyone can write


@FUZZ
@given(dotted=_dotted)
def test_fuzz_params_from_dict_raises_nothing_but_config_error(dotted):
    data = _nested_or_none(dotted)
    if data is None:
        return
    try:
        params = params_from_dict(data, "fuzz.yaml")
    except ConfigError as exc:
        event("ConfigError")
        assert str(exc).startswith("fuzz.yaml: ")
        return
    event("accepted")
    assert isinstance(params, Params)
    assert params_from_dict(params.to_dict()) == params  # what was accepted reads back the same


@FUZZ
@given(
    dotted=st.lists(
        st.sampled_from(_KEYS).flatmap(lambda k: st.tuples(st.just(k), _typed(k) | _scalars)), max_size=6
    ).map(dict)
)
@example(dotted={"mlflow.experiment": "\x85"})  # dumped as a line break, read back as a space
@example(dotted={"train.grad_clip": 2**53 + 1})  # an int past float precision, for a float param
def test_fuzz_load_params_from_yaml_raises_nothing_but_config_error(dotted, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "params.yaml"
    buffer = io.StringIO()
    YAML(typ="safe", pure=True).dump(nested(dotted), buffer)
    path.write_text(buffer.getvalue())
    try:
        params = load_params(path)
    except ConfigError as exc:
        event("ConfigError")
        assert str(exc).startswith(f"{path}: ")
        return
    event("accepted")
    flat = flatten(params.to_dict())
    # what the document says, which is not always what was dumped: YAML reads a lone NEL (\x85) that
    # the dumper wrote as a line break, folded to a space
    written = flatten(YAML(typ="safe", pure=True).load(buffer.getvalue()))
    for key in dotted:  # every accepted value is the one written (ints for floats as floats)
        value = written[key]
        if isinstance(flat[key], str) and not isinstance(value, str):
            value = str(value)
        elif isinstance(flat[key], float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # a float param holds the nearest float: 2**53 + 1 reads as 2**53
        assert flat[key] == value


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("abtrainepochs:._- \n{}[]'\"!&*#%@|>0129")), max_size=60))
def test_fuzz_any_text_is_params_or_config_error(text, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "params.yaml"
    path.write_text(text)
    with contextlib.suppress(ConfigError):
        assert isinstance(load_params(path), Params)


@pytest.mark.parametrize(
    ("datasets", "message"),
    [
        ([{"name": "a", "source": "drive", "root": "x", "extra": 1}], "unknown key(s) datasets[0].extra"),
        ([{"name": "a", "source": "drivee", "root": "x"}], "'datasets[0].source' is 'drivee'; expected"),
        ([{"name": "a", "source": "drive"}], "'datasets[0].root' is missing"),
        ([{"name": "a b", "source": "drive", "root": "x"}], "'datasets[0].name' is 'a b'; it must match"),
        (
            [{"name": "a", "source": "drive", "root": "x"}, {"name": "a", "source": "chase", "root": "y"}],
            "'datasets' names 'a' more than once",
        ),
        ([], "'datasets' must not be empty"),
        ({"name": "a"}, "'datasets' must be a list"),
        (["x"], "'datasets[0]' must be a mapping of keys"),
    ],
)
def test_the_datasets_list_is_checked_entry_by_entry(datasets, message):
    with pytest.raises(ConfigError) as err:
        params_from_dict({"datasets": datasets}, "params.yaml")
    assert str(err.value).startswith("params.yaml: ") and message in str(err.value)


def test_a_datasets_entry_is_read_into_its_fields():
    params = params_from_dict({"datasets": [{"name": "CHASE_DB1", "source": "chase", "root": "../c"}]})
    (entry,) = params.datasets
    assert (entry.name, entry.source, entry.root) == ("CHASE_DB1", "chase", "../c")
