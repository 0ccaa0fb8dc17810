"""scripts/recipe.py: a recipe written into params.yaml changes the recipe's keys and nothing else."""

from __future__ import annotations

import shutil
import subprocess
import sys

from retinaseg.core.config import load_params, parse_params_text


def test_apply_changes_only_the_recipe_lines(repo_root, tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(repo_root / "params.yaml", params)
    before = params.read_text().splitlines()
    subprocess.run(
        [sys.executable, "scripts/recipe.py", "apply", "recipes/drive-cpu.yaml", "--params", str(params),
         "--set", "data.root=../shared/datasets/DRIVE", "--set", "preprocess.scale=fov"],
        cwd=repo_root, check=True, capture_output=True,
    )  # fmt: skip
    after = params.read_text().splitlines()
    assert len(after) == len(before)  # comments, the datasets list and nulls written as they were
    changed = {b.split(":")[0].strip() for b, a in zip(before, after, strict=True) if a != b}
    recipe = parse_params_text((repo_root / "recipes" / "drive-cpu.yaml").read_text())
    expected = {key.split(".")[-1] for key in recipe} | {"root", "scale"}
    assert changed <= expected and "root" in changed and "scale" in changed
    loaded = load_params(params)
    assert (loaded.data.root, loaded.preprocess.scale, loaded.preprocess.size) == (
        "../shared/datasets/DRIVE",
        "fov",
        584,
    )
    assert loaded.models.resnet34_unet.encoder_weights is None and len(loaded.datasets) == 1


def test_list_values_become_dvc_overrides_that_read_back_as_the_recipe(repo_root):
    import shlex

    recipe = repo_root / "recipes" / "drive-chase-cpu.yaml"
    out = subprocess.run(
        [sys.executable, "scripts/recipe.py", "args", str(recipe)],
        cwd=repo_root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    words = shlex.split(out)
    overrides = dict(w.split("=", 1) for w in words[1::2])
    assert words[::2] == ["-S"] * len(overrides)
    expected = parse_params_text(recipe.read_text())
    assert {k: parse_params_text(f"v: {v}")["v"] for k, v in overrides.items()} == expected
    assert [p["name"] for p in expected["data.parts"]] == ["DRIVE", "CHASE_DB1"]
