"""Training augmentation: joint geometry, binary masks, seeded reproducibility, FOV-biased crops."""

from __future__ import annotations

import numpy as np
import pytest

from retinaseg.core.config import AugmentParams
from retinaseg.data.transforms import apply_train_transform, build_train_transform, item_seed, seed_transform


def _sample(size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = (rng.random((size, size)) < 0.2).astype(np.uint8)
    fov = np.zeros((size, size), np.uint8)
    fov[4:-4, 4:-4] = 1
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return image, mask, fov


def test_masks_stay_binary_under_every_augmentation():
    params = AugmentParams(hflip=0.5, vflip=0.5, rot90=0.5, rotate_limit=30, scale_limit=0.2)
    transform = build_train_transform(params, seed=1)
    image, mask, fov = _sample()
    changed = 0
    for _ in range(20):
        out_image, out_mask, out_fov = apply_train_transform(transform, image, mask, fov)
        assert out_image.shape == image.shape and out_image.dtype == np.uint8
        assert out_mask.shape == mask.shape and out_fov.shape == fov.shape
        assert set(np.unique(out_mask)) <= {0, 1}
        assert set(np.unique(out_fov)) <= {0, 1}
        changed += not np.array_equal(out_mask, mask)
    assert changed > 0  # the augmentation did something


def test_geometric_transforms_move_image_and_masks_together():
    # only exact geometric ops: the image's red channel carries the mask, the green the fov
    params = AugmentParams(hflip=0.5, vflip=0.5, rot90=0.5, rotate_limit=0, scale_limit=0,
                           brightness_contrast=0, gamma=0)  # fmt: skip
    transform = build_train_transform(params, seed=3)
    _, mask, fov = _sample(seed=2)
    fov[:10, :] = 0  # asymmetric, so a flip is visible
    image = np.stack([mask * 255, fov * 255, np.zeros_like(mask)], axis=2).astype(np.uint8)
    for _ in range(10):
        out_image, out_mask, out_fov = apply_train_transform(transform, image, mask, fov)
        np.testing.assert_array_equal(out_image[..., 0] // 255, out_mask)
        np.testing.assert_array_equal(out_image[..., 1] // 255, out_fov)


def test_same_seed_same_augmentations_and_reseed_replays():
    params = AugmentParams()
    image, mask, fov = _sample()
    a, b, c = (build_train_transform(params, seed=s) for s in (7, 7, 8))
    outs_a = [apply_train_transform(a, image, mask, fov) for _ in range(5)]
    outs_b = [apply_train_transform(b, image, mask, fov) for _ in range(5)]
    outs_c = [apply_train_transform(c, image, mask, fov) for _ in range(5)]
    for x, y in zip(outs_a, outs_b, strict=True):
        for u, v in zip(x, y, strict=True):
            np.testing.assert_array_equal(u, v)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(outs_a, outs_c, strict=True))
    seed_transform(a, 7)  # what the dataset does per item (with the item's seed)
    replay = [apply_train_transform(a, image, mask, fov) for _ in range(5)]
    for x, y in zip(outs_a, replay, strict=True):
        np.testing.assert_array_equal(x[0], y[0])


def test_transforms_draw_independently():
    # Compose.set_random_seed gives every transform the same seed: HorizontalFlip(p=0.5) and
    # VerticalFlip(p=0.5) would always fire together. seed_transform seeds each one apart.
    params = AugmentParams(hflip=0.5, vflip=0.5, rot90=0, rotate_limit=0, scale_limit=0,
                           brightness_contrast=0, gamma=0)  # fmt: skip
    transform = build_train_transform(params, seed=0)
    image = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    zeros = np.zeros((16, 16), np.uint8)
    seen = set()
    for index in range(40):
        seed_transform(transform, item_seed(5, index))
        out, _, _ = apply_train_transform(transform, image, zeros, zeros)
        h = np.array_equal(out, image[:, ::-1]) or np.array_equal(out, image[::-1, ::-1])
        v = np.array_equal(out, image[::-1]) or np.array_equal(out, image[::-1, ::-1])
        seen.add((h, v))
    assert seen == {(False, False), (True, False), (False, True), (True, True)}


def test_item_seed_depends_on_epoch_seed_and_index():
    seeds = {item_seed(e, i) for e in (1, 2) for i in range(50)}
    assert len(seeds) == 100 and item_seed(1, 3) == item_seed(1, 3)


def test_crops_have_the_crop_size_and_contain_fov_pixels():
    size = 48
    image, mask, _ = _sample(size=size)
    fov = np.zeros((size, size), np.uint8)
    fov[40:44, 2:6] = 1  # a tiny FOV in a corner: a uniform random 12-px crop would mostly miss it
    params = AugmentParams(crop_size=12, rotate_limit=0, scale_limit=0)
    transform = build_train_transform(params, seed=0)
    for _ in range(30):
        out_image, out_mask, out_fov = apply_train_transform(transform, image, mask, fov)
        assert out_image.shape == (12, 12, 3) and out_mask.shape == (12, 12)
        assert out_fov.sum() > 0


def test_disabled_augmentation_is_identity():
    params = AugmentParams(hflip=0, vflip=0, rot90=0, rotate_limit=0, scale_limit=0,
                           brightness_contrast=0, gamma=0, crop_size=0)  # fmt: skip
    transform = build_train_transform(params, seed=0)
    image, mask, fov = _sample()
    out = apply_train_transform(transform, image, mask, fov)
    for got, want in zip(out, (image, mask, fov), strict=True):
        np.testing.assert_array_equal(got, want)


CAMERA_AUGMENTATIONS = ("hue_saturation", "blur", "illumination", "noise", "jpeg")
# every geometric and default photometric augmentation off: what changes is the camera augmentation's
OTHERS_OFF = dict(hflip=0, vflip=0, rot90=0, rotate_limit=0, scale_limit=0, brightness_contrast=0, gamma=0)


def test_camera_augmentations_are_off_by_default_and_change_only_the_image_when_on():
    names = [type(t).__name__ for t in build_train_transform(AugmentParams(), seed=0).transforms]
    camera = {"HueSaturationValue", "GaussianBlur", "OneOf", "Illumination", "GaussNoise", "ImageCompression"}
    assert not camera & set(names)  # the default draws as before
    image, mask, fov = _sample(64, seed=3)
    for name in CAMERA_AUGMENTATIONS:
        params = AugmentParams(**OTHERS_OFF, **{name: 1.0})
        outs = [
            apply_train_transform(build_train_transform(params, seed=s), image, mask, fov) for s in range(8)
        ]
        assert any(not np.array_equal(o[0], image) for o in outs)  # the colour or sharpness changed
        for o in outs:
            np.testing.assert_array_equal(o[1], mask)  # the masks never do
            np.testing.assert_array_equal(o[2], fov)
        again = apply_train_transform(build_train_transform(params, seed=5), image, mask, fov)
        np.testing.assert_array_equal(again[0], outs[5][0])  # seeded: the same draw again


@pytest.mark.parametrize("name", CAMERA_AUGMENTATIONS)
def test_a_camera_augmentation_switched_on_keeps_the_geometric_draws(name):
    # each camera augmentation is appended after the others: the flips, rotations and crops of a seed
    # stay the same, so a run with one switched on differs from its baseline only by that augmentation
    image, mask, fov = _sample(64, seed=4)
    changed = []
    for seed in range(6):
        base = build_train_transform(AugmentParams(crop_size=32), seed)
        on = build_train_transform(AugmentParams(crop_size=32, **{name: 1.0}), seed)
        base_out = apply_train_transform(base, image, mask, fov)
        on_out = apply_train_transform(on, image, mask, fov)
        np.testing.assert_array_equal(on_out[1], base_out[1])
        np.testing.assert_array_equal(on_out[2], base_out[2])
        changed.append(not np.array_equal(on_out[0], base_out[0]))
    assert sum(changed) >= 2  # hue_saturation fires half the time, the others at the probability given


def test_illumination_is_smooth_and_noise_is_not():
    # lighting changes the image slowly across it; sensor noise changes neighbouring pixels independently
    image = np.full((96, 96, 3), 128, np.uint8)
    mask = np.zeros((96, 96), np.uint8)
    fov = np.ones((96, 96), np.uint8)

    def change(name, seed):
        out = apply_train_transform(
            build_train_transform(AugmentParams(**OTHERS_OFF, **{name: 1.0}), seed), image, mask, fov
        )
        return out[0].astype(float) - image

    for seed in range(4):
        lighting, noise = change("illumination", seed), change("noise", seed)
        assert np.abs(lighting).max() >= 3  # at least 5 % of 128 somewhere
        assert np.abs(np.diff(lighting, axis=1)).max() <= 2  # neighbours move together
        assert np.abs(np.diff(noise, axis=1)).mean() > 1  # neighbours move apart
