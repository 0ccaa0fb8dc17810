"""retinaseg.data.sources: every adapter on builder-made trees, sample_id, and `data add`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinaseg.cli import main as cli_main
from retinaseg.core.errors import RetinasegError
from retinaseg.core.fileio import hash_tree
from retinaseg.data.io import read_mask
from retinaseg.data.sources import (
    SOURCES,
    Collision,
    DvcError,
    Pair,
    SourceError,
    add_dataset,
    refused_links,
    sample_id,
    scan_source,
)
from tests.data.builders import make_chase_like, make_folder_dataset, make_stare_like


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("01_manual1.gif", "01"),
        ("01_manual2.gif", "01"),
        ("01_test_mask.gif", "01"),
        ("01_test.tif", "01"),
        ("21_training.tif", "21"),
        ("21_training_mask.gif", "21"),
        ("Image_01L_1stHO.png", "Image_01L"),
        ("Image_01L_2ndHO.png", "Image_01L"),
        ("Image_01L.jpg", "Image_01L"),
        ("im0001.ah.ppm", "im0001"),
        ("im0001.vk.ppm", "im0001"),
        ("im0001.ppm", "im0001"),
        ("3.png", "3"),
        ("case_07_mask.png", "case_07"),
        ("case_07_fov.png", "case_07"),
        ("some/dir/case_07.png", "case_07"),
        ("syn_003.png", "syn_003"),
        ("my scan.png", "my_scan"),
        ("mask.png", "mask"),
    ],
)
def test_sample_id(filename, expected):
    assert sample_id(filename) == expected


def _ids(scan) -> list[str]:
    return [p.id for p in scan.pairs]


def _write_png(path: Path, value: int = 0, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------------------------- kaggle


def _kaggle_tree(root: Path) -> Path:
    data = root / "Data"
    for split, numbers in (("train", (0, 1, 2, 10)), ("test", (0, 1))):
        for n in numbers:
            _write_png(data / split / "image" / f"{n}.png", 100)
            _write_png(data / split / "mask" / f"{n}.png", 255)
    return root


def test_kaggle_pairs_ids_and_split(tmp_path):
    scan = scan_source("kaggle", _kaggle_tree(tmp_path))
    assert _ids(scan) == ["test_0", "test_1", "train_0", "train_1", "train_10", "train_2"]
    assert {p.split for p in scan.pairs if p.id.startswith("train")} == {"train"}
    assert {p.split for p in scan.pairs if p.id.startswith("test")} == {"test"}
    assert all(p.fov is None for p in scan.pairs)
    first = scan.pairs[0]
    assert first.image == tmp_path / "Data" / "test" / "image" / "0.png"
    assert first.mask == tmp_path / "Data" / "test" / "mask" / "0.png"
    assert scan.orphan_images == [] and scan.orphan_masks == []


def test_kaggle_root_may_be_the_data_folder(tmp_path):
    _kaggle_tree(tmp_path)
    assert _ids(scan_source("kaggle", tmp_path / "Data")) == _ids(scan_source("kaggle", tmp_path))


def test_kaggle_orphans_and_non_image_files(tmp_path):
    _kaggle_tree(tmp_path)
    data = tmp_path / "Data" / "train"
    (data / "mask" / "2.png").unlink()  # image 2 loses its mask
    _write_png(data / "mask" / "99.png")  # a mask with no image
    (data / "image" / "notes.txt").write_text("hello")  # any file in image/ is a candidate
    (data / "image" / ".DS_Store").write_bytes(b"\0")  # hidden files are not
    scan = scan_source("kaggle", tmp_path)
    assert scan.orphan_images == [data / "image" / "2.png", data / "image" / "notes.txt"]
    assert scan.orphan_masks == [data / "mask" / "99.png"]
    assert "train_2" not in _ids(scan)


@pytest.mark.drive
def test_kaggle_builder_has_the_kaggle_quirks(kaggle_drive_root):
    scan = scan_source("kaggle", kaggle_drive_root)
    assert len(scan.pairs) == 2 * 4 + 1
    assert [p.id for p in scan.pairs if p.split == "train"] == [f"train_{n}" for n in range(8)]
    data = kaggle_drive_root / "Data" / "train"
    img = [np.asarray(Image.open(data / "image" / f"{n}.png")) for n in range(4)]
    assert img[0].shape == (128, 128, 3)
    np.testing.assert_array_equal(img[1], img[0][:, ::-1])  # horizontal flip
    np.testing.assert_array_equal(img[2], img[0][::-1])  # vertical flip
    assert not np.array_equal(img[3], img[0])  # rotation
    mask = read_mask(data / "mask" / "0.png")
    grey = np.mean((mask > 0) & (mask < 255))
    assert 0.005 < grey < 0.2, grey  # bilinear resizing left grey edge pixels


# ----------------------------------------------------------------------------------------------- drive


@pytest.mark.drive
def test_drive_real_dataset(drive_root):
    scan = scan_source("drive", drive_root)
    assert len(scan.pairs) == 40
    assert sum(p.split == "train" for p in scan.pairs) == 20
    assert sum(p.split == "test" for p in scan.pairs) == 20
    assert _ids(scan)[:2] == ["test_01", "test_02"] and _ids(scan)[-1] == "train_40"
    assert all(p.fov is not None and p.fov.is_file() for p in scan.pairs)
    pair = {p.id: p for p in scan.pairs}["train_21"]
    assert pair.image.name == "21_training.tif"
    assert pair.mask == drive_root / "training" / "1st_manual" / "21_manual1.gif"
    assert pair.fov.name == "21_training_mask.gif"
    assert scan.orphan_images == [] and scan.orphan_masks == []


def _drive_like(root: Path) -> Path:
    for folder, numbers in (("training", (21, 22, 23)), ("test", (1, 2))):
        for n in numbers:
            tag = "training" if folder == "training" else "test"
            _write_png(root / folder / "images" / f"{n:02d}_{tag}.tif")
            _write_png(root / folder / "1st_manual" / f"{n:02d}_manual1.gif", 255)
            _write_png(root / folder / "mask" / f"{n:02d}_{tag}_mask.gif", 255)
            _write_png(root / folder / "2nd_manual" / f"{n:02d}_manual2.gif", 255)
    return root


def test_drive_layout_orphans_and_ignored_files(tmp_path):
    root = _drive_like(tmp_path)
    (root / "training" / "1st_manual" / "23_manual1.gif").unlink()
    _write_png(root / "test" / "1st_manual" / "07_manual1.gif")
    (root / "training" / "images" / "Thumbs.db").write_bytes(b"x")  # not an image suffix: ignored here
    scan = scan_source("drive", root)
    assert _ids(scan) == ["test_01", "test_02", "train_21", "train_22"]
    assert scan.orphan_images == [root / "training" / "images" / "23_training.tif"]
    assert scan.orphan_masks == [root / "test" / "1st_manual" / "07_manual1.gif"]
    assert all(p.mask.parent.name == "1st_manual" for p in scan.pairs)  # never the 2nd observer


def test_scan_files_are_every_file_validation_examines(tmp_path):
    root = _drive_like(tmp_path)
    (root / "training" / "1st_manual" / "23_manual1.gif").unlink()  # 23_training.tif: an orphan image
    (root / "test" / "mask" / "02_test_mask.gif").unlink()  # test_02: a pair without a FOV mask
    scan = scan_source("drive", root)
    files = scan.files()
    assert files == sorted(set(files))
    # 4 pairs: images and masks, FOV masks for 3 of them, plus the orphan image; never 2nd_manual
    assert len(files) == 4 * 2 + 3 + 1
    assert root / "training" / "images" / "23_training.tif" in files
    assert not any(p.parent.name == "2nd_manual" for p in files)


def test_drive_pair_without_fov_file(tmp_path):
    root = _drive_like(tmp_path)
    (root / "test" / "mask" / "02_test_mask.gif").unlink()
    pairs = {p.id: p for p in scan_source("drive", root).pairs}
    assert pairs["test_02"].fov is None and pairs["test_01"].fov is not None


# ----------------------------------------------------------------------------------------- stare, chase


def test_stare_prefers_ah_and_falls_back_to_vk(tmp_path):
    root = make_stare_like(tmp_path, n=3, vk_only=(1,))
    scan = scan_source("stare", root)
    assert _ids(scan) == ["im0001", "im0002", "im0003"]
    masks = {p.id: p.mask.name for p in scan.pairs}
    assert masks == {"im0001": "im0001.ah.ppm", "im0002": "im0002.vk.ppm", "im0003": "im0003.ah.ppm"}
    assert all(p.split is None and p.fov is None for p in scan.pairs)
    assert scan.orphan_images == [] and scan.orphan_masks == []


def test_stare_in_subfolders_with_orphans(tmp_path):
    flat = make_stare_like(tmp_path / "flat", n=3)
    root = tmp_path / "stare"
    (root / "images").mkdir(parents=True)
    (root / "labels-ah").mkdir()
    for f in flat.iterdir():
        shutil.copy(f, root / ("labels-ah" if ".ah." in f.name or ".vk." in f.name else "images") / f.name)
    for f in (root / "labels-ah").glob("im0003.*"):
        f.unlink()  # image without any label
    shutil.copy(root / "labels-ah" / "im0001.ah.ppm", root / "labels-ah" / "im0009.ah.ppm")  # label only
    scan = scan_source("stare", root)
    assert _ids(scan) == ["im0001", "im0002"]
    assert scan.pairs[0].image == root / "images" / "im0001.ppm"
    assert scan.orphan_images == [root / "images" / "im0003.ppm"]
    assert scan.orphan_masks == [root / "labels-ah" / "im0009.ah.ppm"]


def test_stare_gz_only_is_a_clear_error(tmp_path):
    (tmp_path / "im0001.ppm.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(SourceError, match=r"no stare files found.*\.ppm\.gz must be unpacked"):
        scan_source("stare", tmp_path)


def test_chase_pairs_first_observer(tmp_path):
    root = make_chase_like(tmp_path / "CHASEDB1", n=3)
    scan = scan_source("chase", tmp_path)  # recursive from the parent
    assert _ids(scan) == ["Image_01L", "Image_01R", "Image_02L"]
    assert all(p.mask.name.endswith("_1stHO.png") for p in scan.pairs)
    assert scan.pairs[0].image == root / "Image_01L.jpg"
    (root / "Image_02L_1stHO.png").unlink()
    fallback = {p.id: p.mask.name for p in scan_source("chase", root).pairs}
    assert fallback["Image_02L"] == "Image_02L_2ndHO.png"


# ---------------------------------------------------------------------------------------------- folder


def test_folder_flat_with_fov(tmp_path):
    root = make_folder_dataset(tmp_path, n=3, size=32)
    scan = scan_source("folder", root)
    assert _ids(scan) == ["case_00", "case_01", "case_02"]
    assert scan.pairs[1] == Pair(
        "case_01",
        root / "images" / "case_01.png",
        root / "masks" / "case_01_mask.png",
        root / "fov" / "case_01_fov.png",
        None,
    )


def test_folder_with_train_test_split(tmp_path):
    root = make_folder_dataset(tmp_path, n=2, size=32, split=True, fov=False)
    scan = scan_source("folder", root)
    assert _ids(scan) == ["test_case_02", "train_case_00", "train_case_01"]
    assert [p.split for p in scan.pairs] == ["test", "train", "train"]
    assert all(p.fov is None for p in scan.pairs)


def test_folder_orphans_and_stray_files(tmp_path):
    root = make_folder_dataset(tmp_path, n=3, size=32)
    (root / "masks" / "case_02_mask.png").unlink()
    _write_png(root / "masks" / "case_05_mask.png")
    (root / "images" / "notes.txt").write_text("not an image")
    scan = scan_source("folder", root)
    assert _ids(scan) == ["case_00", "case_01"]
    assert scan.orphan_images == [root / "images" / "case_02.png", root / "images" / "notes.txt"]
    assert scan.orphan_masks == [root / "masks" / "case_05_mask.png"]


def test_folder_two_masks_for_one_image(tmp_path):
    root = make_folder_dataset(tmp_path, n=1, size=32, fov=False)
    shutil.copy(root / "masks" / "case_00_mask.png", root / "masks" / "case_00_manual1.png")
    scan = scan_source("folder", root)
    assert [p.mask.name for p in scan.pairs] == ["case_00_manual1.png"]  # the first in sorted order
    assert scan.orphan_masks == []  # not "a mask without an image": a second mask of one sample
    both = (root / "masks" / "case_00_manual1.png", root / "masks" / "case_00_mask.png")
    assert scan.collisions == [Collision("case_00", "mask", both)]


# ------------------------------------------------------------------------------------ id collisions


def _collide(root: Path, kind: str) -> tuple[str, str, list[str]]:
    """Make two files claim one sample in ``root`` (a folder dataset of 2 samples); returns
    (source, id, the colliding files relative to the root)."""
    if kind == "image a.png + a.tif":
        image = Image.open(root / "images" / "case_00.png")
        image.save(root / "images" / "case_00.tif")
        return "folder", "case_00", ["images/case_00.png", "images/case_00.tif"]
    if kind == "two FOV masks":
        Image.open(root / "fov" / "case_01_fov.png").save(root / "fov" / "case_01_fov.gif")
        return "folder", "case_01", ["fov/case_01_fov.gif", "fov/case_01_fov.png"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["image a.png + a.tif", "two FOV masks"])
def test_two_files_for_one_id_are_a_collision_naming_both(tmp_path, kind):
    root = make_folder_dataset(tmp_path / "ds", n=2, size=32)
    source, sid, files = _collide(root, kind)
    scan = scan_source(source, root)
    assert [p.id for p in scan.pairs] == ["case_00", "case_01"]  # one pair per id, the first file's
    [collision] = scan.collisions
    assert collision.id == sid and [f.relative_to(root).as_posix() for f in collision.files] == files
    assert set(collision.files) <= set(scan.files())
    with pytest.raises(SourceError) as err:
        scan.raise_for_collisions()
    assert all(str(root / f) in str(err.value) for f in files) and sid in str(err.value)


def test_one_id_in_two_folders_is_a_collision(synthetic_root, tmp_path):
    """The synthetic layout has no split prefix: train/images/a.png and test/images/a.png are one id."""
    root = tmp_path / "syn"
    shutil.copytree(synthetic_root, root)
    for sub in ("images", "masks", "fov"):
        shutil.copy(root / "train" / sub / "syn_000.png", root / "test" / sub / "syn_000.png")
    scan = scan_source("synthetic", root)
    ids = [p.id for p in scan.pairs]
    assert ids.count("syn_000") == 1
    [collision] = [c for c in scan.collisions if c.role == "image"]
    assert collision.files == (
        root / "test" / "images" / "syn_000.png",
        root / "train" / "images" / "syn_000.png",
    )


def test_two_labels_of_one_kind_in_two_subfolders_are_a_collision(tmp_path):
    root = make_stare_like(tmp_path / "stare", n=2)
    (root / "second").mkdir()
    shutil.copy(root / "im0001.ah.ppm", root / "second" / "im0001.ah.ppm")
    scan = scan_source("stare", root)
    assert [c.files for c in scan.collisions] == [(root / "im0001.ah.ppm", root / "second" / "im0001.ah.ppm")]
    # a second *kind* of label (.vk beside .ah) is by design no collision
    assert not scan_source("stare", make_stare_like(tmp_path / "plain", n=2)).collisions


def test_kaggle_one_number_twice_is_a_collision(tmp_path):
    root = _kaggle_tree(tmp_path)
    _write_png(root / "Data" / "train" / "image" / "1.tif", 100)  # sample id "1" again
    scan = scan_source("kaggle", root)
    assert [(c.id, c.role) for c in scan.collisions] == [("train_1", "image")]


# ------------------------------------------------------------------------------------------- synthetic


def test_synthetic_layout(synthetic_root):
    scan = scan_source("synthetic", synthetic_root)
    assert _ids(scan) == [f"syn_{k:03d}" for k in range(6)]
    assert [p.split for p in scan.pairs] == ["train"] * 4 + ["test"] * 2
    assert all(p.fov is not None and p.fov.parent.name == "fov" for p in scan.pairs)
    assert scan.orphan_images == [] and scan.orphan_masks == []


# -------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("source", SOURCES)
def test_missing_root(tmp_path, source):
    with pytest.raises(SourceError, match="dataset folder not found"):
        scan_source(source, tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("kaggle", "not a Kaggle"),
        ("drive", "not a DRIVE layout"),
        ("stare", "no stare files found"),
        ("chase", "no chase files found"),
        ("folder", "not a folder layout"),
        ("synthetic", "not a synthetic dataset"),
    ],
)
def test_wrong_layout_names_the_root(tmp_path, source, words):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(SourceError) as info:
        scan_source(source, tmp_path)
    assert words in str(info.value) and str(tmp_path) in str(info.value)


def test_unknown_source(tmp_path):
    with pytest.raises(SourceError, match="unknown data source 'fives'"):
        scan_source("fives", tmp_path)


def test_scan_is_deterministic(tmp_path):
    root = make_folder_dataset(tmp_path, n=4, size=32)
    assert scan_source("folder", root) == scan_source("folder", root)


# ------------------------------------------------------------------------------------------ data add


def _dvc_repo(path: Path, repo_root: Path) -> Path:
    path.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    shutil.copy(repo_root / ".gitignore", path / ".gitignore")  # the project's real ignore rules
    dvc = Path(sys.executable).parent / "dvc"
    subprocess.run([str(dvc), "init", "-q"], cwd=path, check=True)
    return path


@pytest.mark.slow
def test_add_dataset_copies_and_tracks(tmp_path, repo_root):
    user = make_folder_dataset(tmp_path / "user", n=2, size=32)
    before = hash_tree(user)
    repo = _dvc_repo(tmp_path / "repo", repo_root)

    added = add_dataset("folder", user, repo)
    dest = added.dest
    assert dest == repo / "data" / "raw" / "folder"
    assert (repo / "data" / "raw" / "folder.dvc").is_file()
    assert hash_tree(dest) == before == hash_tree(user)  # copied unchanged, user folder untouched
    # what to commit and what to set (printed by `retinaseg data add`, see test_cli_data_add)
    assert added.copied and added.rel == "data/raw/folder" and "data/raw/folder.dvc" in added.to_commit
    ignored = subprocess.run(["git", "check-ignore", "-q", "data/raw/folder.dvc"], cwd=repo)
    assert ignored.returncode == 1  # the .dvc file can be committed
    assert not list((repo / "data" / "raw").glob(".folder.*"))  # no temp dirs left

    add_dataset("folder", user, repo)  # same content again: fine, nothing copied
    (user / "images" / "case_00.png").write_bytes((user / "images" / "case_01.png").read_bytes())
    with pytest.raises(SourceError, match="already exists with different content"):
        add_dataset("folder", user, repo)


def test_add_dataset_refusals(tmp_path):
    user = make_folder_dataset(tmp_path / "user", n=1, size=32)
    with pytest.raises(SourceError, match="not a DVC repository"):
        add_dataset("folder", user, tmp_path)
    (tmp_path / ".dvc").mkdir()
    with pytest.raises(SourceError, match="generated by the pipeline"):
        add_dataset("synthetic", user, tmp_path)
    with pytest.raises(SourceError, match="not a DRIVE layout"):
        add_dataset("drive", user, tmp_path)
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_a_failed_dvc_add_is_a_dvc_error_and_leaves_nothing(tmp_path):
    user = make_folder_dataset(tmp_path / "user", n=1, size=32)
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)  # looks like a DVC repository, but dvc cannot work in it
    with pytest.raises(DvcError, match="`dvc add data/raw/folder` failed") as err:
        add_dataset("folder", user, repo)
    assert isinstance(err.value, RetinasegError) and isinstance(err.value, RuntimeError)
    assert not (repo / "data" / "raw" / "folder").exists()  # the copy this call made is gone again


@pytest.mark.slow
def test_cli_data_add(tmp_path, repo_root, monkeypatch, capsys):
    user = make_chase_like(tmp_path / "chase", n=2, size=32)
    repo = _dvc_repo(tmp_path / "repo", repo_root)
    monkeypatch.chdir(repo)
    assert cli_main(["data", "add", "--source", "chase", "--root", str(user)]) == 0
    assert (repo / "data" / "raw" / "chase.dvc").is_file()
    out = capsys.readouterr().out
    assert "git add data/raw/chase.dvc" in out and "data.root" in out
    assert cli_main(["data", "add", "--source", "stare", "--root", str(user)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {user}: no image/mask pairs found for source 'stare'\n"


# ----------------------------------------------------------------------- data add and symbolic links
# A link that stays inside the dataset folder is allowed and copied as what it points at (DVC tracks
# plain files); a link that leaves it, points to nothing or loops is refused before anything is copied.


def _repo_with_dvc_dir(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)  # enough for the checks that come before `dvc add`
    return repo


@pytest.mark.parametrize(
    "make_link",
    [
        pytest.param(lambda root, out: (root / "images" / "case_09.png", out / "secret.png"), id="file-abs"),
        pytest.param(
            lambda root, out: (root / "masks" / "x_mask.png", Path("../../outside/secret.png")), id="file-rel"
        ),
        pytest.param(lambda root, out: (root / "extra", out), id="folder"),
        pytest.param(lambda root, out: (root / "images" / "gone.png", root / "nope.png"), id="dangling"),
        pytest.param(lambda root, out: (root / "images" / "loop", root), id="loop"),
    ],
)
def test_data_add_refuses_a_link_that_leaves_the_dataset(tmp_path, make_link):
    root = make_folder_dataset(tmp_path / "user", n=1, size=32)
    outside = tmp_path / "outside"
    outside.mkdir()
    _write_png(outside / "secret.png", 7)
    link, target = make_link(root, outside)
    link.symlink_to(target)
    before = hash_tree(outside)
    repo = _repo_with_dvc_dir(tmp_path)
    with pytest.raises(SourceError) as err:
        add_dataset("folder", root, repo)
    message = str(err.value)
    assert str(link) in message and "nothing copied" in message
    # a relative link target is relative to the link's folder (Path.resolve() alone would use the cwd)
    where = (link.parent / target).resolve()
    assert ("does not exist" in message) if target.name == "nope.png" else (str(where) in message)
    assert not (repo / "data").exists()  # nothing copied, nothing half-written, no temp folder
    assert hash_tree(outside) == before


def test_a_chain_of_links_is_judged_by_where_it_ends(tmp_path):
    root = make_folder_dataset(tmp_path / "user", n=1, size=32)
    _write_png(tmp_path / "secret.png")
    (root / "hop.png").symlink_to(tmp_path / "secret.png")
    (root / "images" / "case_05.png").symlink_to(root / "hop.png")  # inside -> inside -> outside
    links = {link.name: why for link, why in refused_links(root)}
    assert set(links) == {"hop.png", "case_05.png"} and all("outside" in w for w in links.values())


def test_links_inside_the_dataset_are_allowed(tmp_path):
    root = make_folder_dataset(tmp_path / "user", n=2, size=32)
    (root / "images" / "alias.png").symlink_to(root / "images" / "case_00.png")
    (root / "shortcut").symlink_to(root / "masks")  # a folder inside: copied as a folder
    assert refused_links(root) == []


def test_a_link_changed_after_the_check_is_still_not_followed_out(tmp_path, monkeypatch):
    """The copy itself refuses a source outside the dataset (a link swapped in after the check)."""
    root = make_folder_dataset(tmp_path / "user", n=1, size=32)
    _write_png(tmp_path / "secret.png")
    (root / "images" / "late.png").symlink_to(tmp_path / "secret.png")
    monkeypatch.setattr("retinaseg.data.sources.refused_links", lambda root: [])
    repo = _repo_with_dvc_dir(tmp_path)
    with pytest.raises(SourceError, match="late.png: points to .*secret.png, outside the dataset folder"):
        add_dataset("folder", root, repo)
    assert not (repo / "data" / "raw" / "folder").exists()
    assert list((repo / "data" / "raw").iterdir()) == []  # the temporary folder is gone too


@pytest.mark.slow
def test_data_add_copies_a_link_inside_the_dataset_as_its_content(tmp_path, repo_root):
    root = make_folder_dataset(tmp_path / "user", n=2, size=32)
    (root / "notes").mkdir()
    (root / "notes" / "same_mask.png").symlink_to(root / "masks" / "case_00_mask.png")
    repo = _dvc_repo(tmp_path / "repo", repo_root)
    added = add_dataset("folder", root, repo)
    copy = added.dest / "notes" / "same_mask.png"
    assert copy.is_file() and not copy.is_symlink()
    assert copy.read_bytes() == (root / "masks" / "case_00_mask.png").read_bytes()


@pytest.mark.slow
def test_data_add_names_each_file_that_cannot_be_decoded_and_adds_the_dataset(
    tmp_path, repo_root, monkeypatch, capsys
):
    root = make_folder_dataset(tmp_path / "user", n=3, size=32)
    good = (root / "images" / "case_01.png").read_bytes()
    (root / "images" / "case_01.png").write_bytes(good[: len(good) // 2])  # truncated
    (root / "masks" / "case_02_mask.png").write_bytes(b"")
    repo = _dvc_repo(tmp_path / "repo", repo_root)
    monkeypatch.chdir(repo)
    assert cli_main(["data", "add", "--source", "folder", "--root", str(root)]) == 1
    captured = capsys.readouterr()
    truncated = "truncated or corrupt image data (image file is truncated)"
    assert captured.err.splitlines() == [
        f"error: {root / 'images' / 'case_01.png'}: {truncated}",
        f"error: {root / 'masks' / 'case_02_mask.png'}: empty file",
        "2 of 9 files failed",
    ]
    assert "3 pairs copied in data/raw/folder" in captured.out
    assert hash_tree(repo / "data" / "raw" / "folder") == hash_tree(root)
