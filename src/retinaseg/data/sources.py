"""Dataset adapters: find the (image, vessel mask, field-of-view mask) pairs of a dataset on disk.

Each public dataset has its own layout and naming scheme; an adapter turns one into a sorted list of
:class:`Pair` plus the files it could not pair (orphans), so validation can report them by name.

==========  =====================================================================================
source      layout (``root`` is the folder the user points at)
==========  =====================================================================================
kaggle      ``Data/{train,test}/{image,mask}/<N>.png`` (``root`` may also be the ``Data`` folder);
            ids ``train_<N>``/``test_<N>``; split from the folder; no FOV masks
drive       ``{training,test}/images/NN_{training,test}.tif``, ``1st_manual/NN_manual1.gif``,
            ``mask/NN_{training,test}_mask.gif``; ids ``train_NN``/``test_NN``; FOV from ``mask/``
stare       ``imXXXX.ppm`` + ``imXXXX.ah.ppm`` (Hoover; ``.vk`` when ``.ah`` is absent), searched
            recursively; no split, no FOV
chase       ``Image_01L.jpg`` + ``Image_01L_1stHO.png`` (``_2ndHO`` when ``_1stHO`` is absent),
            searched recursively; no split, no FOV
folder      ``images/*`` + ``masks/*`` paired by :func:`sample_id`, optional ``fov/*``; or the same
            under ``train/`` and ``test/`` (then ids ``train_<id>``/``test_<id>`` and that split)
synthetic   ``{train,test}/{images,masks,fov}/<id>.png`` (what :mod:`retinaseg.data.synthetic` writes)
multi       several of the above, each in its own folder under ``root`` (``data.parts``: name, source,
            path); ids ``<name>_<id>``, paths still relative to ``root``; each part keeps its split
==========  =====================================================================================

In the image/mask folders of kaggle, folder and synthetic every (non-hidden) file is a candidate, so a
stray ``notes.txt`` reaches validation and is reported as "not an image"; elsewhere only files with an
image suffix (:data:`retinaseg.data.io.IMAGE_SUFFIXES`) are considered.

Ids are unique: two files that claim one sample in one role (``a.png`` and ``a.tif`` as images, two
masks or FOV masks of one id, two splits of the synthetic layout both holding ``a.png``) are a
:class:`Collision` that names every file; the scan keeps the first (sorted) for the pair so the id can
be reported and excluded, and validation reports every file of it as a ``duplicate_id`` error (never a
silent drop). A second *kind* of annotation (STARE's ``.vk`` beside ``.ah``, CHASE's ``_2ndHO`` beside
``_1stHO``) is not a collision: the preferred one is the pair's mask, the other its ``second_mask``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from retinaseg.core.errors import RetinasegError
from retinaseg.core.fileio import atomic_dir, hash_tree
from retinaseg.data.io import IMAGE_SUFFIXES, UNREADABLE, ImageReadError, check_image

if TYPE_CHECKING:
    from retinaseg.core.config import DataPartParams

# the single-dataset sources (what `data add`, `retinaseg validate --source` and a part take)
SOURCES: tuple[str, ...] = ("synthetic", "kaggle", "drive", "stare", "chase", "folder")
MULTI = "multi"  # data.source: multi, several single-source datasets under one root (data.parts)


class SourceError(RetinasegError, ValueError):
    """A dataset root that is missing or not laid out the way its source expects."""


class DvcError(RetinasegError, RuntimeError):
    """``dvc`` is missing, or ``dvc add`` failed (its own message is included)."""


@dataclass(frozen=True)
class Pair:
    """One sample: an image, its vessel mask, its field-of-view mask (when the dataset has one);
    ``split`` is the dataset's own split, ``dataset`` the part of a multi dataset it came from;
    ``second_mask`` a second observer's vessel mask where the dataset ships one for this image
    (CHASE_DB1's ``_2ndHO`` beside ``_1stHO``, STARE's ``.vk`` beside ``.ah``): ``mask`` is always the
    first observer's, the reference every score is measured against; ``data.train_labels: union``
    trains on both."""

    id: str
    image: Path
    mask: Path
    fov: Path | None = None
    split: str | None = None
    dataset: str | None = None
    second_mask: Path | None = None


@dataclass(frozen=True)
class Collision:
    """Several files that claim one sample id in one role (``image``, ``mask``, ``FOV mask``,
    ``vessel label``); ``files`` sorted, the first is the one the scan paired."""

    id: str
    role: str
    files: tuple[Path, ...]

    def message(self, name: Callable[[Path], str] = str) -> str:
        """``id 'a' is claimed by 2 image files: images/a.png, images/a.tif; ...``; ``name`` shows a path."""
        return (
            f"id {self.id!r} is claimed by {len(self.files)} {self.role} files: "
            f"{', '.join(name(f) for f in self.files)}; one sample has one {self.role} (rename or remove one)"
        )


@dataclass
class Scan:
    """What an adapter found under ``root``."""

    source: str
    root: Path
    pairs: list[Pair] = field(default_factory=list)
    orphan_images: list[Path] = field(default_factory=list)
    orphan_masks: list[Path] = field(default_factory=list)
    collisions: list[Collision] = field(default_factory=list)

    def files(self) -> list[Path]:
        """Every file the scan found and validation examines: the pairs' images, masks and FOV
        masks, the orphans and the files of id collisions, each once, sorted."""
        found = {*self.orphan_images, *self.orphan_masks}
        for pair in self.pairs:
            found.update(p for p in (pair.image, pair.mask, pair.fov) if p is not None)
        for collision in self.collisions:
            found.update(collision.files)
        return sorted(found)

    def raise_for_collisions(self) -> None:
        """``SourceError`` naming every file of the first id collision (for callers that use the
        pairs without validating them, e.g. evaluating a model on a dataset folder)."""
        if self.collisions:
            more = f" (and {len(self.collisions) - 1} more ids)" if len(self.collisions) > 1 else ""
            raise SourceError(f"{self.root}: {self.collisions[0].message()}{more}")


# Suffixes that name an annotation of a sample rather than the sample itself, stripped (repeatedly, from
# the end) by sample_id: DRIVE (_manual1, _manual2, _mask, _test, _training), STARE (.ah, .vk),
# CHASE_DB1 (_1stHO, _2ndHO) and common folder conventions (_mask, _fov, _gt, _label, _vessels, ...).
_ANNOTATION_SUFFIX = re.compile(
    r"(?:[._-](?:manual\d*|mask|masks|fov|test|training|train|1stho|2ndho|ah|vk|gt|label|labels"
    r"|vessel|vessels|seg|segmentation|annotation|groundtruth))+$",
    re.IGNORECASE,
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sample_id(filename: str | Path) -> str:
    """The id a file belongs to, across the datasets' naming schemes.

    ``01_manual1.gif``, ``01_manual2.gif``, ``01_test_mask.gif``, ``01_test.tif`` → ``01``;
    ``Image_01L_1stHO.png`` → ``Image_01L``; ``im0001.ah.ppm`` → ``im0001``; ``3.png`` → ``3``.
    Characters that are unsafe in file names become ``_``.
    """
    stem = Path(filename).name
    if "." in stem:
        stem = stem.rsplit(".", 1)[0]
    base = _ANNOTATION_SUFFIX.sub("", stem) or stem  # "mask.png" stays "mask", not ""
    return _UNSAFE.sub("_", base).strip("_") or base


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _list_files(folder: Path, any_file: bool) -> list[Path]:
    """Sorted non-hidden files directly in ``folder``; only image suffixes unless ``any_file``."""
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.is_file() and not _is_hidden(p)]
    if not any_file:
        files = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files)


def _walk_images(root: Path) -> list[Path]:
    """Every non-hidden file with an image suffix under ``root`` (recursive), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                out.append(Path(dirpath) / name)
    return sorted(out)


_Part = tuple[list[Pair], list[Path], list[Path], list[Collision]]


def _one_per_id(
    files: Iterable[Path], role: str, prefix: str = ""
) -> tuple[dict[str, Path], list[Collision]]:
    """``{sample id: first file}`` (sorted) and a :class:`Collision` for every id claimed twice."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(files):
        groups.setdefault(sample_id(path), []).append(path)
    collisions = [Collision(f"{prefix}{sid}", role, tuple(g)) for sid, g in groups.items() if len(g) > 1]
    return {sid: group[0] for sid, group in groups.items()}, collisions


def _pair_by_id(
    images: Iterable[Path],
    masks: Iterable[Path],
    fovs: Iterable[Path] = (),
    split: str | None = None,
    prefix: str = "",
) -> _Part:
    """Pair files by :func:`sample_id`. Returns ``(pairs, orphan_images, orphan_masks, collisions)``.

    Two masks (or FOV masks) with one id: a collision, the first (sorted) is paired. Two images with
    one id both become pairs here; :func:`_merge` turns them into a collision.
    """
    mask_by_id, collisions = _one_per_id(masks, "mask", prefix)
    fov_by_id, fov_collisions = _one_per_id(fovs, "FOV mask", prefix)
    collisions += fov_collisions

    pairs: list[Pair] = []
    orphan_images: list[Path] = []
    used: set[str] = set()
    for image in sorted(images):
        sid = sample_id(image)
        mask = mask_by_id.get(sid)
        if mask is None:
            orphan_images.append(image)
            continue
        used.add(sid)
        pairs.append(Pair(f"{prefix}{sid}", image, mask, fov_by_id.get(sid), split))
    orphan_masks = [m for sid, m in mask_by_id.items() if sid not in used]
    return pairs, orphan_images, orphan_masks, collisions


def _merge(source: str, root: Path, parts: Iterable[_Part]) -> Scan:
    """One scan from its parts (splits); pairs that end with one id (two images of one sample, or one
    id in two folders) are a collision whose first pair (by image path) is kept."""
    scan = Scan(source, root)
    found: list[Pair] = []
    for pairs, orphan_images, orphan_masks, collisions in parts:
        found.extend(pairs)
        scan.orphan_images.extend(orphan_images)
        scan.orphan_masks.extend(orphan_masks)
        scan.collisions.extend(collisions)
    by_id: dict[str, list[Pair]] = {}
    for pair in sorted(found, key=lambda p: (p.id, p.image.as_posix())):
        by_id.setdefault(pair.id, []).append(pair)
    for sid, group in by_id.items():
        scan.pairs.append(group[0])
        if len(group) > 1:
            scan.collisions.append(Collision(sid, "image", tuple(p.image for p in group)))
    scan.orphan_images.sort()
    scan.orphan_masks.sort()
    scan.collisions.sort(key=lambda c: (c.id, c.role))
    return scan


def _scan_kaggle(root: Path) -> Scan:
    is_data_folder = (root / "train" / "image").is_dir() or (root / "test" / "image").is_dir()
    data = root if is_data_folder else root / "Data"
    splits = [s for s in ("train", "test") if (data / s / "image").is_dir() or (data / s / "mask").is_dir()]
    if not splits:
        raise SourceError(
            f"{root}: not a Kaggle 'Retina Blood Vessel' layout: expected Data/train/image/, "
            f"Data/train/mask/ (and Data/test/...) under it, or the Data folder itself"
        )
    return _merge(
        "kaggle",
        root,
        (
            _pair_by_id(
                _list_files(data / s / "image", any_file=True),
                _list_files(data / s / "mask", any_file=True),
                split=s,
                prefix=f"{s}_",
            )
            for s in splits
        ),
    )


_DRIVE_SPLITS = {"training": "train", "test": "test"}


def _scan_drive(root: Path) -> Scan:
    folders = [f for f in _DRIVE_SPLITS if (root / f / "images").is_dir()]
    if not folders:
        raise SourceError(
            f"{root}: not a DRIVE layout: expected training/images/ and/or test/images/ "
            f"(with 1st_manual/ and mask/ beside them)"
        )
    parts = []
    for folder in folders:
        split = _DRIVE_SPLITS[folder]
        base = root / folder
        parts.append(
            _pair_by_id(
                _list_files(base / "images", any_file=False),
                _list_files(base / "1st_manual", any_file=False),
                _list_files(base / "mask", any_file=False),
                split=split,
                prefix=f"{split}_",
            )
        )
    return _merge("drive", root, parts)


def _scan_annotated(
    source: str, root: Path, label_re: re.Pattern[str], preference: tuple[str, ...], expected: str
) -> Scan:
    """STARE/CHASE: one recursive folder of images and labels told apart by a label marker in the name.

    ``label_re`` captures the marker (e.g. ``ah``/``vk``); ``preference`` orders the markers.
    """
    images: list[Path] = []
    labels: dict[str, list[Path]] = {m: [] for m in preference}
    for path in _walk_images(root):
        match = label_re.search(path.name)
        if match:
            labels[match.group(1).lower()].append(path)
        else:
            images.append(path)
    if not images and not any(labels.values()):
        raise SourceError(f"{root}: no {source} files found: expected {expected} (searched recursively)")
    by_marker: list[dict[str, Path]] = []
    collisions: list[Collision] = []
    for marker in preference:
        first, same_marker = _one_per_id(labels[marker], "vessel label")
        collisions += same_marker  # two labels of one kind for one id (e.g. in two subfolders)
        by_marker.append(first)
    # the preferred kind of annotation is the mask; the next kind present, the second observer's
    chosen: dict[str, Path] = {}
    second: dict[str, Path] = {}
    for first in by_marker:
        for sid, path in first.items():
            if sid not in chosen:
                chosen[sid] = path
            else:
                second.setdefault(sid, path)
    image_ids = {sample_id(p) for p in images}
    extra_labels = [p for sid, p in chosen.items() if sid not in image_ids]
    pairs, orphan_images, _, _ = _pair_by_id(images, [p for sid, p in chosen.items() if sid in image_ids])
    pairs = [replace(p, second_mask=second.get(p.id)) for p in pairs]
    return _merge(source, root, [(pairs, orphan_images, extra_labels, collisions)])


def _scan_stare(root: Path) -> Scan:
    return _scan_annotated(
        "stare",
        root,
        re.compile(r"\.(ah|vk)\.[^.]+$", re.IGNORECASE),
        ("ah", "vk"),
        "imXXXX.ppm images with imXXXX.ah.ppm (or .vk.ppm) vessel labels; .ppm.gz must be unpacked first",
    )


def _scan_chase(root: Path) -> Scan:
    return _scan_annotated(
        "chase",
        root,
        re.compile(r"_(1stho|2ndho)\.[^.]+$", re.IGNORECASE),
        ("1stho", "2ndho"),
        "Image_01L.jpg images with Image_01L_1stHO.png vessel labels",
    )


def _folder_part(base: Path, split: str | None) -> tuple[list[Pair], list[Path], list[Path]]:
    return _pair_by_id(
        _list_files(base / "images", any_file=True),
        _list_files(base / "masks", any_file=True),
        _list_files(base / "fov", any_file=False),
        split=split,
        prefix=f"{split}_" if split else "",
    )


def _scan_folder(root: Path) -> Scan:
    splits = [s for s in ("train", "test") if (root / s / "images").is_dir()]
    if splits:
        return _merge("folder", root, (_folder_part(root / s, s) for s in splits))
    if not (root / "images").is_dir():
        raise SourceError(
            f"{root}: not a folder layout: expected images/ and masks/ (optional fov/), "
            f"or train/ and test/ each holding them"
        )
    return _merge("folder", root, [_folder_part(root, None)])


def _scan_synthetic(root: Path) -> Scan:
    splits = [s for s in ("train", "test") if (root / s / "images").is_dir()]
    if not splits:
        raise SourceError(
            f"{root}: not a synthetic dataset: expected train/images/, train/masks/, train/fov/ "
            f"(and test/...); run `retinaseg generate --out {root}` or `dvc repro generate`"
        )
    return _merge(
        "synthetic",
        root,
        (
            _pair_by_id(
                _list_files(root / s / "images", any_file=True),
                _list_files(root / s / "masks", any_file=True),
                _list_files(root / s / "fov", any_file=False),
                split=s,
            )
            for s in splits
        ),
    )


_SCANNERS = {
    "synthetic": _scan_synthetic,
    "kaggle": _scan_kaggle,
    "drive": _scan_drive,
    "stare": _scan_stare,
    "chase": _scan_chase,
    "folder": _scan_folder,
}


def _check_root(root: Path) -> None:
    if not root.exists():
        raise SourceError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder")


def _scan_multi(root: Path, parts: Sequence[DataPartParams]) -> Scan:
    """Every part scanned at ``root/<path>`` by its own source, ids prefixed ``<name>_``, merged into
    one scan whose root is ``root`` (so the manifest's paths are ``<path>/...``)."""
    if not parts:
        raise SourceError(f"{root}: data source 'multi' needs its parts (data.parts: name, source, path)")
    merged: list[_Part] = []
    for index, part in enumerate(parts):
        where = f"data.parts[{index}] ({part.name!r}, source {part.source!r})"
        if part.source not in _SCANNERS:
            raise SourceError(f"{where}: unknown source; expected one of {', '.join(SOURCES)}")
        if Path(part.path).is_absolute() or ".." in Path(part.path).parts:  # a link inside root may lead out
            raise SourceError(
                f"{where}: path {part.path!r} must be a folder inside {root} (relative, no '..')"
            )
        part_root = root / part.path
        try:
            _check_root(part_root)
            scan = _SCANNERS[part.source](part_root)
        except SourceError as exc:
            raise SourceError(f"{where}: {exc}") from None
        prefix = f"{part.name}_"
        pairs = [replace(p, id=f"{prefix}{p.id}", dataset=part.name) for p in scan.pairs]
        collisions = [Collision(f"{prefix}{c.id}", c.role, c.files) for c in scan.collisions]
        merged.append((pairs, scan.orphan_images, scan.orphan_masks, collisions))
    return _merge(MULTI, root, merged)


def scan_source(source: str, root: str | Path, parts: Sequence[DataPartParams] = ()) -> Scan:
    """Find the pairs and orphans of dataset ``source`` under ``root`` (sorted, deterministic).

    ``source`` ``multi`` scans each of ``parts`` (``data.parts``) at ``root/<path>`` with its own
    source; its ids are ``<name>_<id>`` and its pairs carry the part's name (``Pair.dataset``).
    Raises :class:`SourceError` for an unknown source, a missing root (or part folder), a root that
    does not have that source's layout, or parts given for a single source.
    """
    root = Path(root)
    if source == MULTI:
        _check_root(root)
        return _scan_multi(root, parts)
    if source not in _SCANNERS:
        raise SourceError(f"unknown data source {source!r}; expected one of {', '.join((*SOURCES, MULTI))}")
    if parts:
        raise SourceError(f"{root}: parts are only read for data source 'multi', not {source!r}")
    _check_root(root)
    return _SCANNERS[source](root)


# --------------------------------------------------------------------------------------------------
# data add: copy a user's dataset into data/raw/<source>/ and track it with DVC


def _dvc_executable() -> str:
    candidate = Path(sys.executable).parent / "dvc"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("dvc")
    if found:
        return found
    raise DvcError(f"dvc not found beside {sys.executable} or on PATH; install the project's environment")


@dataclass(frozen=True)
class AddedDataset:
    """What :func:`add_dataset` did: ``dest`` (``<repo>/data/raw/<source>``), ``rel`` (the same,
    relative to the repository, POSIX), the number of pairs, whether the files were copied (False:
    identical content was already there), the files to commit (``<rel>.dvc``, and
    ``data/raw/.gitignore`` when DVC keeps one there), how many files the scan found and the
    error lines of those that cannot be decoded (copied all the same: validation decides)."""

    source: str
    dest: Path
    rel: str
    n_pairs: int
    copied: bool
    to_commit: tuple[str, ...]
    n_files: int = 0
    bad_files: tuple[str, ...] = ()


#: How many refused links an error names (the rest are counted).
LINKS_SHOWN = 3


def refused_links(root: str | Path) -> list[tuple[Path, str]]:
    """The symbolic links under ``root`` that ``data add`` refuses, with the reason: a link whose
    target (every link on the way resolved) is outside ``root``, one that points to nothing, and a
    link to a folder that holds the link (a loop). Links that stay inside ``root`` are allowed: they
    are copied as the file or folder they point at (DVC tracks plain files)."""
    root = Path(root)
    real_root = root.resolve()
    refused: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):  # links to folders are listed, not entered
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            link = Path(dirpath) / name
            if not link.is_symlink():
                continue
            target = Path(os.path.realpath(link))
            if not target.exists():
                refused.append((link, f"points to {os.readlink(link)}, which does not exist"))
            elif not target.is_relative_to(real_root):
                refused.append((link, f"points to {target}, outside the dataset folder {real_root}"))
            elif target.is_dir() and Path(os.path.realpath(link.parent)).is_relative_to(target):
                refused.append((link, f"points to {target}, a folder that holds the link (a loop)"))
    return refused


def _refuse_links(root: Path) -> None:
    refused = refused_links(root)
    if not refused:
        return
    shown = "; ".join(f"{link} {why}" for link, why in refused[:LINKS_SHOWN])
    more = f"; +{len(refused) - LINKS_SHOWN} more" if len(refused) > LINKS_SHOWN else ""
    raise SourceError(
        f"{root}: {len(refused)} symbolic link(s) refused, nothing copied: {shown}{more} "
        "(data add copies only what is inside the dataset folder: copy the files in instead)"
    )


def _copy_inside(real_root: Path) -> Callable[[str, str], object]:
    """``shutil.copy2`` that refuses a source outside ``real_root`` (a link changed after the check)."""

    def copy(src: str, dst: str) -> object:
        target = Path(os.path.realpath(src))
        if not target.is_relative_to(real_root):
            raise SourceError(f"{src}: points to {target}, outside the dataset folder {real_root}")
        return shutil.copy2(src, dst)

    return copy


def _bad_files(scan: Scan, on_error: Callable[[str], None]) -> list[str]:
    """Decode every file of ``scan``; one error line (``<path>: <problem>``) per file that fails.
    Files that cannot even be read (permission denied) cannot be copied: ``SourceError`` after all
    the lines, before anything is copied."""
    bad: list[ImageReadError] = []
    for path in scan.files():
        try:
            check_image(path)
        except ImageReadError as exc:
            bad.append(exc)
            on_error(str(exc))
    unreadable = [exc.path for exc in bad if exc.reason.startswith(UNREADABLE)]
    if unreadable:
        raise SourceError(
            f"{scan.root}: {len(unreadable)} file(s) cannot be read, so the dataset cannot be copied; "
            f"nothing copied (first: {unreadable[0]})"
        )
    return [str(exc) for exc in bad]


def _copy_tree(root: Path, dest: Path) -> None:
    """Copy ``root`` to ``dest`` (swapped in whole); a file that cannot be copied (unreadable, disk
    full) is a ``SourceError`` naming it, and nothing is left at ``dest``."""
    real_root = root.resolve()
    try:
        with atomic_dir(dest) as tmp:
            shutil.copytree(root, tmp, dirs_exist_ok=True, copy_function=_copy_inside(real_root))
    except shutil.Error as exc:  # copytree's collected failures: [(src, dst, why), ...]
        failures = exc.args[0] if exc.args and isinstance(exc.args[0], list) else [(root, dest, str(exc))]
        src, _, why = failures[0]
        more = f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""
        raise SourceError(f"{src}: cannot be copied into {dest}: {why}{more}; nothing copied") from None


def add_dataset(
    source: str,
    root: str | Path,
    repo_root: str | Path = ".",
    on_error: Callable[[str], None] | None = None,
) -> AddedDataset:
    """Copy dataset ``root`` unchanged into ``<repo_root>/data/raw/<source>/`` and ``dvc add`` it.

    Refuses (``SourceError``, nothing copied) when the source is unknown or ``synthetic`` (a pipeline
    output), when ``root`` is not that source's layout, when a symbolic link under ``root`` leaves it,
    points to nothing or loops (:func:`refused_links`), or when ``data/raw/<source>`` already holds
    different content. Identical content is not copied again. Every file of the scan is decoded
    first: each one that fails is passed to ``on_error`` as one line and listed in ``bad_files``
    (the dataset is still copied: validation reports or excludes those files). The user's folder is
    only read. ``DvcError`` when dvc is missing or ``dvc add`` fails (a folder this call copied is
    removed again).
    """
    if source not in SOURCES:
        raise SourceError(f"unknown data source {source!r}; expected one of {', '.join(SOURCES[1:])}")
    if source == "synthetic":
        raise SourceError("the synthetic dataset is generated by the pipeline (`dvc repro generate`)")
    root = Path(root)
    repo = Path(repo_root)
    if not (repo / ".dvc").is_dir():
        raise SourceError(f"{repo.resolve()}: not a DVC repository (no .dvc/); run `dvc init` there first")
    scan = scan_source(source, root)
    if not scan.pairs:
        raise SourceError(f"{root}: no image/mask pairs found for source {source!r}")
    _refuse_links(root)
    rel = Path("data") / "raw" / source
    dest = repo / rel
    src_abs, dest_abs = root.resolve(), dest.resolve()
    if src_abs == dest_abs:
        copied = False
    elif dest_abs.is_relative_to(src_abs) or src_abs.is_relative_to(dest_abs):
        raise SourceError(f"{root}: the dataset folder and {rel.as_posix()} overlap; choose another folder")
    elif dest.exists():
        if hash_tree(dest) != hash_tree(root):
            raise SourceError(
                f"{rel.as_posix()} already exists with different content than {root}; "
                f"remove it first (`dvc remove {rel.as_posix()}.dvc && rm -r {rel.as_posix()}`) to replace it"
            )
        copied = False
    else:
        copied = True
    bad = _bad_files(scan, on_error or (lambda line: None))
    if copied:
        _copy_tree(root, dest)

    result = subprocess.run(
        [_dvc_executable(), "add", rel.as_posix()], cwd=repo, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        if copied:
            shutil.rmtree(dest, ignore_errors=True)  # we created it; leave the repo as we found it
        raise DvcError(f"`dvc add {rel.as_posix()}` failed:\n{(result.stderr or result.stdout).strip()}")

    to_commit = [f"{rel.as_posix()}.dvc"]
    if (repo / "data" / "raw" / ".gitignore").exists():
        to_commit.append("data/raw/.gitignore")
    return AddedDataset(
        source, dest, rel.as_posix(), len(scan.pairs), copied, tuple(to_commit), len(scan.files()), tuple(bad)
    )
