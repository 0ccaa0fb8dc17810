"""VesselDataset over the processed layout: item format, cycling, augmentation, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from retinaseg.core.config import AugmentParams
from retinaseg.data.dataset import DatasetError, VesselDataset
from retinaseg.data.transforms import build_train_transform, seed_worker
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


def test_worker_seeding_is_reproducible_and_differs_between_workers(tmp_path):
    one = make_processed(tmp_path / "one", n_train=1, n_val=1, size=24)
    transform = build_train_transform(AugmentParams(rotate_limit=45), seed=0)
    ds = VesselDataset(one / "train", transform=transform, length=4)  # the same image four times

    def run() -> list[torch.Tensor]:
        loader = DataLoader(ds, batch_size=1, num_workers=2, worker_init_fn=seed_worker,
                            generator=torch.Generator().manual_seed(3))  # fmt: skip
        return [b["image"] for b in loader]

    first, second = run(), run()
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b)
    # items 0 and 1 are the first draw of worker 0 and worker 1: unseeded workers would agree
    assert not torch.equal(first[0], first[1])


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
