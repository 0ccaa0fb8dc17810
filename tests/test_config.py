"""One source of truth for the defaults: params.yaml and the config dataclasses agree key for key and
value for value, and every configured value is read by the code."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

from retinaseg.core.config import Params, flatten, load_params, parse_params_text

REPO = Path(__file__).resolve().parents[1]
CONFIG_PY = REPO / "src" / "retinaseg" / "core" / "config.py"


def _yaml_keys() -> dict[str, object]:
    return flatten(parse_params_text((REPO / "params.yaml").read_text()))


def _default_keys() -> dict[str, object]:
    return flatten(Params().to_dict())


def test_params_yaml_keys_are_exactly_the_config_fields():
    yaml_keys, fields = set(_yaml_keys()), set(_default_keys())
    assert sorted(yaml_keys - fields) == [], "in params.yaml but not a config field"
    assert sorted(fields - yaml_keys) == [], "a config field missing from params.yaml"


@pytest.mark.parametrize("key", sorted(_default_keys()))
def test_every_default_equals_params_yaml(key):
    default, configured = _default_keys()[key], _yaml_keys()[key]
    assert type(default) is type(configured) or {type(default), type(configured)} == {int, float}, key
    assert default == configured, f"{key}: dataclass default {default!r}, params.yaml {configured!r}"


def test_loading_params_yaml_gives_the_defaults():
    assert load_params(REPO / "params.yaml") == Params()


@functools.cache
def _code() -> str:
    files = [*sorted((REPO / "src").rglob("*.py")), *sorted((REPO / "stages").glob("*.py"))]
    return "\n".join(p.read_text() for p in files if p != CONFIG_PY)


@pytest.mark.parametrize("key", sorted(_default_keys()))
def test_every_config_field_is_read(key):
    # a text search: `<group>.<field>` read as an attribute, or a models.<name> field passed as a
    # keyword argument of the architecture (Params.model_params → build_model(**params))
    code = _code()
    parts = key.split(".")
    group, field = parts[0], parts[-1]  # a top-level list (datasets) is its own group and field
    pattern = rf"\b{field}\b" if group == "models" else rf"\.{field}\b"
    assert re.search(pattern, code), f"{key} is never read in src/ or stages/ (outside core/config.py)"
