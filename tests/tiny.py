"""The one tiny configuration the tests shrink the project to: seconds of CPU instead of minutes.

- :data:`TINY_UNET` — the ``models.unet`` params of a U-Net that trains in a second (4 base channels,
  depth 2); also used for ``attention_unet``.
- :data:`TINY_PREPROCESS` — preprocessing of the tiny saved models (64 px).
- :data:`TINY_TRAIN` — ``load_params`` overrides for the training tests (CPU, 32 px, one epoch).
- :data:`TINY_PIPELINE` — the ``params.yaml`` update for whole-pipeline runs in a repository copy.
"""

from __future__ import annotations

from typing import Any

TINY_UNET: dict[str, Any] = {"base_channels": 4, "depth": 2, "norm": "batch", "dropout": 0.0}
TINY_PREPROCESS: dict[str, Any] = {"size": 64, "clahe": False, "clahe_clip": 2.0, "clahe_tile": 8}

_TINY_WIDTHS = {
    f"models.{name}.{key}": TINY_UNET[key]
    for name in ("unet", "attention_unet")
    for key in ("base_channels", "depth")
}

TINY_TRAIN: dict[str, Any] = {
    "base.device": "cpu",
    "base.threads": 1,
    "preprocess.size": 32,
    "train.epochs": 1,
    "train.batch_size": 2,
    "train.warmup_epochs": 0,
    "augment.crop_size": 24,
    **_TINY_WIDTHS,
}


def nested(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` → ``{"a": {"b": 1}}`` (params.yaml's shape)."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


TINY_PIPELINE: dict[str, Any] = nested(
    {
        "synthetic.n_train": 6,
        "synthetic.n_test": 2,
        "synthetic.size": 64,
        "preprocess.size": TINY_PREPROCESS["size"],
        "train.epochs": 2,
        "train.batch_size": 2,
        **_TINY_WIDTHS,
        "evaluate.bootstrap": 50,
        "evaluate.n_overlays": 1,
    }
)
