"""VesselDataset over the processed layout: item format, cycling, augmentation, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from retinaseg.core.config import AugmentParams
from retinaseg.data.dataset import DatasetError, VesselDataset
from retinaseg.data.transforms import build_train_transform, item_seed, seed_worker
from tests.training.processed_data import make_processed


@pytest.fixture()
def processed(tmp_path):
    return make_processed(tmp_path / "processed", n_train=3, n_val=2, size=24)


def test_items_have_the_documented_format(processed):
    ds = VesselDataset(processed / "train")
    assert len(ds) == 3 and ds.ids == ["train_00", "train_01", "train_02"]
    item = ds[1]
    assert item["id"] == "train_01"
    assert item["image"].shape == (3, 24, 24) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 24, 24) and item["fov"].shape == (1, 24, 24)
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0} and item["mask"].sum() > 0
    assert set(item["fov"].unique().tolist()) == {0.0, 1.0}
    # ImageNet normalisation: a black pixel (outside the FOV) is -mean/std in the red channel
    assert item["image"][0, 0, 0].item() == pytest.approx(-0.485 / 0.229, abs=1e-5)


def test_length_cycles_the_images(processed):
    ds = VesselDataset(processed / "train", length=7)
    assert len(ds) == 7 and ds.n_images == 3
    assert ds[4]["id"] == ds[1]["id"]
    torch.testing.assert_close(ds[6]["image"], ds[0]["image"])
    with pytest.raises(IndexError):
        ds[7]


def test_augmented_items_are_reproducible_after_reseed_and_masks_stay_binary(processed):
    ds = VesselDataset(
        processed / "train", transform=build_train_transform(AugmentParams(crop_size=16), seed=0)
    )
    ds.reseed(5)
    first = [ds[i] for i in range(3)]
    ds.reseed(5)
    again = [ds[i] for i in range(3)]
    for a, b in zip(first, again, strict=True):
        assert a["image"].shape == (3, 16, 16)
        torch.testing.assert_close(a["image"], b["image"])
        torch.testing.assert_close(a["mask"], b["mask"])
        assert set(a["mask"].unique().tolist()) <= {0.0, 1.0}


def _batches(ds: VesselDataset, workers: int, sampler) -> list[dict]:
    loader = DataLoader(ds, batch_size=2, sampler=sampler, num_workers=workers, worker_init_fn=seed_worker,
                        generator=torch.Generator().manual_seed(3))  # fmt: skip
    return list(loader)


def test_seeded_items_give_the_same_batches_with_0_and_2_workers(tmp_path):
    one = make_processed(tmp_path / "one", n_train=2, n_val=1, size=24)
    transform = build_train_transform(AugmentParams(rotate_limit=45, crop_size=16), seed=0)
    ds = VesselDataset(one / "train", transform=transform, length=6)
    order = [(i, item_seed(11, i)) for i in (4, 0, 5, 2, 1, 3)]  # (index, augmentation seed) pairs
    serial, parallel = _batches(ds, 0, order), _batches(ds, 2, order)
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel, strict=True):
        assert a["id"] == b["id"]
        for key in ("image", "mask", "fov"):
            assert torch.equal(a[key], b[key]), key
    # the augmentation is drawn: the same image (indices 4 and 0 are image 0) is augmented differently
    assert serial[0]["id"][0] == serial[0]["id"][1] and not torch.equal(*serial[0]["image"])
    # and an item's augmentation is its seed's alone, not its position in the stream
    alone = ds[(5, item_seed(11, 5))]
    assert torch.equal(alone["image"], serial[1]["image"][0])


def test_unseeded_items_differ_between_workers(tmp_path):
    one = make_processed(tmp_path / "one", n_train=1, n_val=1, size=24)
    transform = build_train_transform(AugmentParams(rotate_limit=45), seed=0)
    ds = VesselDataset(one / "train", transform=transform, length=4)  # the same image four times
    first, second = _batches(ds, 2, range(4)), _batches(ds, 2, range(4))
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a["image"], b["image"])
    # items 0-1 and 2-3 are the first batches of worker 0 and worker 1: unseeded workers would agree
    assert not torch.equal(first[0]["image"], first[1]["image"])


def test_images_are_decoded_per_item(processed):
    ds = VesselDataset(processed / "train")
    assert not hasattr(ds, "images")  # nothing decoded up front
    before = ds[0]["image"]
    path = processed / "train" / "images" / "train_00.png"
    from PIL import Image

    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(path)
    after = ds[0]["image"]
    assert not torch.equal(before, after)  # read from disk when asked for
    image, mask, fov = ds.load(0)
    assert image.shape == (24, 24, 3) and image.dtype == np.uint8 and image.max() == 0
    assert set(np.unique(mask)) <= {0, 1} and set(np.unique(fov)) == {0, 1}
    assert ds.image_size == (24, 24)
    path.unlink()
    with pytest.raises(DatasetError, match=r"train_00\.png: file not found"):
        ds[0]


def test_the_cache_keeps_decoded_samples_within_its_budget(processed):
    one_sample = 24 * 24 * 5  # RGB image + vessel mask + FOV, uint8
    ds = VesselDataset(processed / "train", cache_bytes=2 * one_sample)
    first = [ds[k]["image"] for k in range(3)]
    assert ds.cached_bytes == 2 * one_sample  # the first two were kept, the third did not fit
    # a kept sample is not read again: the file on disk changes, the item does not
    from PIL import Image

    for k in range(3):
        Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(processed / "train" / "images" / f"train_0{k}.png")
    assert torch.equal(ds[0]["image"], first[0]) and torch.equal(ds[1]["image"], first[1])
    assert not torch.equal(ds[2]["image"], first[2])  # past the budget: decoded each time
    # the cache hands out copies: writing into a loaded sample leaves the cached one alone
    image, mask, _ = ds.load(0)
    image[:] = 7
    mask[:] = 1
    again, mask_again, _ = ds.load(0)
    assert torch.equal(ds[0]["image"], first[0]) and again.max() != 7 and mask_again.min() == 0
    with pytest.raises(ValueError, match="cache_bytes"):
        VesselDataset(processed / "train", cache_bytes=-1)


def test_augmented_items_are_the_same_with_and_without_the_cache(processed):
    def items(cache_bytes: int) -> list[dict]:
        transform = build_train_transform(AugmentParams(rotate_limit=30, crop_size=16), seed=0)
        ds = VesselDataset(processed / "train", transform=transform, length=9, cache_bytes=cache_bytes)
        return [ds[(i, item_seed(4, i))] for i in (0, 3, 6, 1, 4, 2, 8, 5, 7)]  # images revisited

    for a, b in zip(items(0), items(10**6), strict=True):
        for key in ("image", "mask", "fov"):
            assert torch.equal(a[key], b[key]), key


def test_missing_split_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="processed split folder not found"):
        VesselDataset(tmp_path / "nope")


def test_empty_split_is_a_clear_error(tmp_path):
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "index.csv").write_text("id,orig_h\n")
    with pytest.raises(DatasetError, match="split is empty"):
        VesselDataset(tmp_path / "val")


def test_missing_file_names_the_file(processed):
    (processed / "val" / "masks" / "val_01.png").unlink()
    with pytest.raises(DatasetError, match=r"val_01\.png: file not found"):
        VesselDataset(processed / "val")


def test_corrupt_file_names_the_file(processed):
    (processed / "val" / "fov" / "val_00.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"fov/val_00\.png: not a readable image"):
        VesselDataset(processed / "val")


def test_size_mismatch_is_reported(processed):
    from PIL import Image

    Image.fromarray(np.zeros((10, 10), np.uint8)).save(processed / "val" / "masks" / "val_00.png")
    with pytest.raises(DatasetError, match="same size"):
        VesselDataset(processed / "val")
