"""Recipes: named sets of params.yaml overrides (recipes/*.yaml, flat ``group.key: value`` lines).

    python scripts/recipe.py args recipes/drive-gpu.yaml
        prints ``-S key=value ...`` for ``dvc exp run`` (shell-quoted):
        dvc exp run -n drive-gpu $(python scripts/recipe.py args recipes/drive-gpu.yaml)
    python scripts/recipe.py apply recipes/drive-gpu.yaml [--set key=value ...] [--params params.yaml]
        writes the overrides into params.yaml itself (comments kept), for machines that run the
        pipeline with ``dvc repro`` or the stage scripts and no git (scripts/gpu_check.sh)

Every key must already exist in params.yaml, and the result is checked by the project's params loader
(ranges, cross-field rules) before anything is written: a recipe that would not load is refused with
the loader's message, and params.yaml is left as it was.
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from retinaseg.core.config import ConfigError, params_from_dict, parse_params_text
from retinaseg.core.fileio import write_text

TOP_LEVEL_KEYS = ("datasets",)  # params.yaml's keys that are not in a group (a list)


def _is_key(key: str) -> bool:
    return "." in key or key in TOP_LEVEL_KEYS


def read_recipe(path: Path) -> dict[str, Any]:
    """The recipe's ``{dotted key: value}`` (YAML 1.2, as DVC reads params)."""
    try:
        data = parse_params_text(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the recipe: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and _is_key(k) for k in data):
        raise ConfigError(
            f"{path}: a recipe is a mapping of dotted keys (group.key: value, or datasets: [...])"
        )
    return dict(data)


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", ...]`` → ``{"a.b": 1}`` (values parsed as YAML, as ``dvc exp run -S`` does)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _is_key(key):
            raise ConfigError(f"--set {item!r}: expected group.key=value (or datasets=[...])")
        out[key] = parse_params_text(f"v: {value}")["v"] if value else None
    return out


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):  # data.parts, datasets: JSON is YAML's flow style, as -S reads it
        return json.dumps(value)
    return str(value)


def dvc_args(overrides: dict[str, Any]) -> str:
    """``-S key=value`` arguments, shell-quoted."""
    return " ".join(f"-S {shlex.quote(f'{k}={_yaml_scalar(v)}')}" for k, v in overrides.items())


def apply(params_path: Path, overrides: dict[str, Any]) -> None:
    """Write ``overrides`` into ``params_path`` (round trip: comments kept), after validating the result."""
    yaml = YAML()  # round-trip
    yaml.indent(mapping=2, sequence=4, offset=2)  # params.yaml's own style for lists (datasets:)
    # None as `null`, as params.yaml writes it (ruamel's round trip would leave the value empty)
    yaml.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    doc = yaml.load(params_path.read_text())
    for dotted, value in overrides.items():
        node = doc
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"{params_path}: recipe key {dotted!r}: no group {part!r} in params.yaml")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"{params_path}: recipe key {dotted!r} is not a key of params.yaml")
        node[parts[-1]] = value
    buffer = io.StringIO()
    yaml.dump(doc, buffer)
    text = buffer.getvalue()
    params_from_dict(parse_params_text(text), source=f"{params_path} with the recipe")  # raises ConfigError
    write_text(params_path, text)  # temp file then rename, the user's umask


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_args = sub.add_parser("args", help="print the recipe as dvc exp run -S arguments")
    p_args.add_argument("recipe", type=Path)
    p_apply = sub.add_parser("apply", help="write the recipe into params.yaml")
    p_apply.add_argument("recipe", type=Path)
    p_apply.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra overrides")
    p_apply.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    try:
        overrides = read_recipe(args.recipe)
        if args.command == "args":
            print(dvc_args(overrides))
        else:
            overrides.update(parse_sets(args.set))
            apply(args.params, overrides)
            print(f">> {args.params}: {len(overrides)} keys set from {args.recipe}")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
