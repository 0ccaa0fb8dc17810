"""The model package (`retinaseg model export`): one pickle-free zip file that `retinaseg predict` runs
from an empty folder exactly as the model it came from, byte-identical on re-export, written
atomically, and refused (a ModelLoadError naming the file) whenever it holds anything but a model."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retinaseg.cli import main
from retinaseg.core.config import PreprocessParams
from retinaseg.models import saved
from retinaseg.models.factory import build_model
from retinaseg.models.package import ExportError, export_model
from retinaseg.models.saved import (
    PACKAGE_MEMBERS,
    ModelCard,
    ModelLoadError,
    is_model_package,
    load_model,
    load_model_dir,
    save_model_dir,
)
from tests.serving.helpers import train_tiny_unet
from tests.tiny import TINY_PREPROCESS, TINY_UNET

SUBPROCESS_TIMEOUT_S = 180


def _card(threshold: float | None = 0.37) -> ModelCard:
    extra = {"data_hash": "d" * 64, "train_image_size": 64, "best_epoch": 3, "best_val_dice": 0.61}
    return ModelCard("unet", dict(TINY_UNET), dict(TINY_PREPROCESS), threshold=threshold, extra=extra)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A saved tiny U-Net trained a little (BN statistics and weights not at their init)."""
    out = tmp_path_factory.mktemp("models") / "unet"
    save_model_dir(train_tiny_unet(), _card(), out)
    return out


@pytest.fixture(scope="module")
def package(model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packages") / "unet.retinaseg.zip"
    export_model(model_dir, out)
    return out


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _write_zip(path: Path, members: list[tuple[str, bytes]], method: int = zipfile.ZIP_STORED) -> Path:
    """A zip with exactly these (name, bytes) members, in this order (duplicates allowed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w", compression=method) as zf:
        warnings.simplefilter("ignore")  # "Duplicate name": wanted here
        for name, data in members:
            zf.writestr(name, data)
    return path


def _fundus_png(path: Path, seed: int = 3, h: int = 45, w: int = 52) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    disc = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < (min(h, w) * 0.47) ** 2
    image = np.zeros((h, w, 3), np.uint8)
    image[disc] = (190, 85, 40)
    image = np.clip(image + rng.integers(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def _retinaseg_command() -> list[str]:
    script = Path(sys.executable).with_name("retinaseg")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "retinaseg.cli"]


def _clean_env() -> dict[str, str]:
    """The environment of a user's shell: no MLflow store, no DVC stage, one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["OMP_NUM_THREADS"] = "1"
    return env


# ------------------------------------------------------------------------------------- round trip


def test_predict_runs_the_package_from_an_empty_folder_exactly_like_the_directory(
    model_dir, package, tmp_path, monkeypatch, capsys
):
    image = _fundus_png(tmp_path / "photos" / "eye.png")
    # the package, by a separate `retinaseg predict` process started in an empty folder: no params.yaml,
    # no git checkout, no MLflow store
    home = tmp_path / "empty"
    home.mkdir()
    run = subprocess.run(
        [
            *_retinaseg_command(),
            "predict",
            "--model",
            str(package),
            str(image),
            "--out",
            "out",
            "--device",
            "cpu",
        ],
        cwd=home,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert run.returncode == 0, run.stderr
    assert "segmented 1 of 1 image(s)" in run.stdout and "threshold 0.370" in run.stdout
    assert sorted(p.name for p in home.iterdir()) == ["out"]  # nothing else appeared (no mlflow.db, ...)
    report = json.loads((home / "out" / "predict_report.json").read_text())
    assert report["model_name"] == "unet" and report["threshold"] == pytest.approx(0.37)

    # the original directory, by the same command in another empty folder
    other = tmp_path / "empty2"
    other.mkdir()
    monkeypatch.chdir(other)
    for key in [k for k in os.environ if k.startswith(("MLFLOW_", "DVC_"))]:
        monkeypatch.delenv(key)
    assert main(["predict", "--model", str(model_dir), str(image), "--out", "out", "--device", "cpu"]) == 0
    capsys.readouterr()
    for kind in ("prob", "mask", "overlay"):
        from_package = np.asarray(Image.open(home / "out" / f"eye_{kind}.png"))
        from_dir = np.asarray(Image.open(other / "out" / f"eye_{kind}.png"))
        assert np.array_equal(from_package, from_dir), kind
    assert 0 < np.asarray(Image.open(home / "out" / "eye_mask.png")).mean() < 255  # not a constant map


def test_the_loaded_package_is_the_model(model_dir, package):
    original, card = load_model_dir(model_dir)
    loaded, packaged = load_model(package)
    assert not loaded.training
    x = torch.randn(2, 3, 37, 41)
    with torch.no_grad():
        assert torch.equal(loaded(x), original(x))
    # the card travels whole: architecture, preprocessing, threshold, the training facts...
    assert (packaged.name, packaged.model_params, packaged.threshold) == (card.name, card.model_params, 0.37)
    assert packaged.preprocess_params() == card.preprocess_params() == PreprocessParams(**TINY_PREPROCESS)
    assert {k: v for k, v in packaged.extra.items() if k != "export"} == card.extra
    # ...plus where it came from and which weights, and nothing that changes from run to run
    export = packaged.extra["export"]
    assert set(export) == {"package_format", "source", "retinaseg_version", "weights_sha256"}
    assert export["package_format"] == 1 and export["source"] == "directory"
    assert export["weights_sha256"] == hashlib.sha256(_members(package)["model.safetensors"]).hexdigest()


def test_a_package_is_recognised_by_content_not_name(package, tmp_path):
    renamed = tmp_path / "my model.bin"
    renamed.write_bytes(package.read_bytes())
    assert is_model_package(renamed) and not is_model_package(tmp_path)
    _, card = load_model(str(renamed))
    assert card.name == "unet"


def test_a_package_can_be_exported_again_unchanged(package, tmp_path):
    again = export_model(package, tmp_path / "again.retinaseg.zip")
    assert again.card.extra["export"]["source"] == "package"
    ours, theirs = _members(again.path), _members(package)
    assert ours["model.safetensors"] == theirs["model.safetensors"]


def test_model_card_md_says_what_it_is_and_how_to_run_it(package):
    text = _members(package)["MODEL_CARD.md"].decode("utf-8")
    n_params = sum(p.numel() for p in build_model("unet", TINY_UNET).parameters())
    for expected in (
        "`unet`",
        f"parameters: {n_params:,}",
        "threshold: **0.37**",
        "screening aid",
        "not a diagnosis",
        "retinaseg predict --model unet.retinaseg.zip",
        "resized to 64 px",
        "data_hash",
        hashlib.sha256(_members(package)["model.safetensors"]).hexdigest(),
    ):
        assert expected in text, expected


@pytest.mark.slow
def test_export_from_a_registered_mlflow_model(model_dir, mlflow_uri, tmp_path, monkeypatch):
    import mlflow

    from tests.serving.test_serving import register_champion

    monkeypatch.chdir(tmp_path)  # MLflow's ./mlruns, if any, stays in tmp_path
    try:
        champion = register_champion(model_dir, threshold=0.25, f1=0.5)
        first = export_model(champion["uri"], tmp_path / "a" / "champion.retinaseg.zip")
        second = export_model(champion["uri"], tmp_path / "b" / "champion.retinaseg.zip")
    finally:
        mlflow.set_tracking_uri(None)
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.card.threshold == 0.25  # the registered copy's threshold, chosen on validation data
    assert first.card.extra["export"]["source"] == "mlflow"
    original, _ = load_model_dir(model_dir)
    loaded, card = load_model(first.path)
    x = torch.randn(1, 3, 30, 34)
    with torch.no_grad():
        assert torch.equal(loaded(x), original(x))
    assert card.threshold == 0.25


# -------------------------------------------------------------------------- reproducible, pickle-free


def test_two_exports_are_byte_identical(model_dir, package, tmp_path):
    again = export_model(model_dir, tmp_path / "elsewhere" / "other-name.zip")
    assert again.path.read_bytes() == package.read_bytes()
    assert again.size == package.stat().st_size
    # a copy of the model directory saved again (new files, new times) exports the same bytes too
    model, card = load_model_dir(model_dir)
    save_model_dir(model, card, tmp_path / "copy")
    assert export_model(tmp_path / "copy", tmp_path / "copy.zip").path.read_bytes() == package.read_bytes()
    with zipfile.ZipFile(package) as zf:
        infos = zf.infolist()
    assert [i.filename for i in infos] == sorted(PACKAGE_MEMBERS)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert str(model_dir).encode() not in package.read_bytes()  # no local paths inside


def test_the_package_holds_no_pickle(package):
    members = _members(package)
    assert sorted(members) == ["MODEL_CARD.md", "model.json", "model.safetensors"]
    for name, data in members.items():
        assert not name.endswith((".pkl", ".pt", ".pth", ".pickle")), name
        assert not data[:2].startswith(tuple(b"\x80" + bytes([p]) for p in range(2, 6))), name
        assert not data.startswith(b"PK"), f"{name} is a zip (torch.save) inside the package"
    # model.safetensors: an 8-byte header length, a JSON header naming each tensor, then raw tensor data
    weights = members["model.safetensors"]
    (n,) = struct.unpack("<Q", weights[:8])
    header = json.loads(weights[8 : 8 + n])
    assert header.pop("__metadata__") == {"format": "pt"}
    expected = build_model("unet", TINY_UNET).state_dict()
    assert set(header) == set(expected)
    for key, entry in header.items():
        assert entry["shape"] == list(expected[key].shape), key
    assert max(e["data_offsets"][1] for e in header.values()) == len(weights) - 8 - n
    assert json.loads(members["model.json"])["format_version"] == 1


def test_loading_a_package_unpickles_nothing(package, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled or torch.load-ed while loading a package")

    class RefusingUnpickler:
        def __init__(self, *args, **kwargs):
            refuse()

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", RefusingUnpickler)
    monkeypatch.setattr(torch, "load", refuse)
    model, _ = load_model(package)
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 1, 16, 16)


# --------------------------------------------------------------------------------- hostile packages


def _repack(package: Path, out: Path, **changes: bytes | None) -> Path:
    """``package``'s members with some replaced (bytes) or removed (None); ``__`` in a keyword is a
    dot (``model__safetensors``)."""
    members = _members(package)
    for key, value in changes.items():
        name = key.replace("__", ".")
        if value is None:
            members.pop(name)
        else:
            members[name] = value
    return _write_zip(out, sorted(members.items()))


def _refused(path: Path, match: str, tmp_path: Path, monkeypatch) -> ModelLoadError:
    """Loading ``path`` is a ModelLoadError naming it; nothing is written anywhere while trying."""
    scratch = tmp_path / "scratch-tmp"
    scratch.mkdir(exist_ok=True)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    before = sorted(p.name for p in path.parent.iterdir())
    with pytest.raises(ModelLoadError, match=match) as info:
        load_model(path)
    assert str(info.value).startswith(f"{path}: "), str(info.value)
    assert info.value.path == str(path)
    assert sorted(p.name for p in path.parent.iterdir()) == before
    assert not list(scratch.iterdir()), "loading wrote temporary files"
    return info.value


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ([("evil.py", b"import os")], r"unexpected member\(s\) 'evil\.py'"),
        ([("../evil", b"x")], r"unsafe member name '\.\./evil'"),
        ([("/etc/evil", b"x")], r"unsafe member name '/etc/evil'"),
        ([("sub/", b"")], r"unexpected folder 'sub/'"),
        ([("model.json", b"{}")], r"member\(s\) stored twice: model\.json"),
    ],
)
def test_anything_more_than_the_three_members_is_refused(package, tmp_path, monkeypatch, members, match):
    bad = _write_zip(tmp_path / "pkg" / "bad.retinaseg.zip", [*sorted(_members(package).items()), *members])
    _refused(bad, f"not a valid model package: .*{match}", tmp_path, monkeypatch)


def test_a_missing_member_is_refused(package, tmp_path, monkeypatch):
    for name in PACKAGE_MEMBERS:
        bad = _repack(package, tmp_path / "pkg" / f"no-{name}.zip", **{name.replace(".", "__"): None})
        _refused(bad, rf"not a valid model package: missing {name}", tmp_path, monkeypatch)


def test_weights_replaced_by_a_torch_save_pickle_are_refused(package, tmp_path, monkeypatch):
    model, _ = load_model(package)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)  # what a model.pt holds: a zip with a pickle inside
    bad = _repack(package, tmp_path / "pkg" / "pickled.zip", model__safetensors=buffer.getvalue())
    _refused(
        bad, r"model\.safetensors: holds a pickle \(torch\.save\), not safetensors", tmp_path, monkeypatch
    )
    bare = _repack(package, tmp_path / "pkg" / "bare.zip", model__safetensors=pickle.dumps({"a": 1}))
    _refused(bare, r"model\.safetensors: holds a pickle", tmp_path, monkeypatch)


def test_a_torch_checkpoint_passed_as_package_is_refused(model_dir, tmp_path, monkeypatch):
    pt = tmp_path / "pkg" / "model.pt"
    pt.parent.mkdir()
    pt.write_bytes((model_dir / "model.pt").read_bytes())  # a zip too, by content
    _refused(pt, r"a torch\.save file \(a pickle\), not a model package", tmp_path, monkeypatch)


def test_weights_of_another_architecture_are_refused(package, tmp_path, monkeypatch):
    card = json.loads(_members(package)["model.json"])
    card["model_params"]["base_channels"] = 8  # the weights (sha256 intact) are for base_channels 4
    bad = _repack(package, tmp_path / "pkg" / "other-arch.zip", model__json=json.dumps(card).encode())
    _refused(
        bad,
        r"model\.safetensors: weights do not match the 'unet' architecture in model\.json: "
        r".*shape mismatches",
        tmp_path,
        monkeypatch,
    )
    # weights of another model swapped in under the original card: the recorded sha256 catches it
    from safetensors.torch import save

    other = save({k: v.contiguous() for k, v in build_model("unet", TINY_UNET).state_dict().items()})
    swapped = _repack(package, tmp_path / "pkg" / "swapped.zip", model__safetensors=other)
    _refused(
        swapped, r"model\.safetensors is not the file exported with this model\.json", tmp_path, monkeypatch
    )


def test_garbage_weights_and_a_bad_card_are_refused(package, tmp_path, monkeypatch):
    bad = _repack(package, tmp_path / "pkg" / "garbage.zip", model__safetensors=b"\x00" * 64)
    _refused(bad, r"model\.safetensors: not a readable safetensors file", tmp_path, monkeypatch)
    bad = _repack(package, tmp_path / "pkg" / "card.zip", model__json=b"{nope")
    _refused(bad, r"model\.json: not valid JSON", tmp_path, monkeypatch)
    card = json.loads(_members(package)["model.json"])
    card["extra"]["export"]["package_format"] = 2
    bad = _repack(package, tmp_path / "pkg" / "future.zip", model__json=json.dumps(card).encode())
    _refused(bad, r"package format 2 is not supported", tmp_path, monkeypatch)


def _declare_size(path: Path, member: str, size: int) -> None:
    """Make the zip's central directory declare ``size`` uncompressed bytes for ``member`` (in place)."""
    data = bytearray(path.read_bytes())
    start = 0
    while (start := data.find(b"PK\x01\x02", start)) >= 0:
        name_len = struct.unpack_from("<H", data, start + 28)[0]
        if data[start + 46 : start + 46 + name_len] == member.encode():
            struct.pack_into("<I", data, start + 24, size)
            path.write_bytes(bytes(data))
            return
        start += 4
    raise AssertionError(f"{member} not in {path}")


def test_a_declared_zip_bomb_is_refused_before_reading(package, tmp_path, monkeypatch):
    bomb = tmp_path / "pkg" / "bomb.zip"
    bomb.parent.mkdir()
    bomb.write_bytes(package.read_bytes())
    _declare_size(bomb, "model.safetensors", 0xFFFF_FFF0)  # ~4 GiB, beyond the 1 GiB allowed
    read = []
    monkeypatch.setattr(saved, "_read_member", lambda *a: read.append(a) or b"")
    _refused(
        bomb,
        r"model\.safetensors: declares 4294967280 bytes, more than the 1073741824 allowed",
        tmp_path,
        monkeypatch,
    )
    assert not read  # refused from the zip's directory alone


def test_a_deflated_bomb_and_an_understated_size_are_refused(package, tmp_path, monkeypatch):
    monkeypatch.setitem(saved.MAX_MEMBER_BYTES, "MODEL_CARD.md", 1 << 16)
    members = sorted({**_members(package), "MODEL_CARD.md": b"\x00" * (8 << 20)}.items())
    bomb = _write_zip(tmp_path / "pkg" / "deflated.zip", members, zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 100_000  # 8 MiB of zeros in a few kB
    _refused(
        bomb, r"MODEL_CARD\.md: declares 8388608 bytes, more than the 65536 allowed", tmp_path, monkeypatch
    )
    # a member that declares fewer bytes than it holds is not read past its declared size
    liar = _write_zip(tmp_path / "pkg" / "liar.zip", sorted(_members(package).items()), zipfile.ZIP_DEFLATED)
    _declare_size(liar, "model.safetensors", 100)
    _refused(liar, r"not a readable zip file, damaged or truncated", tmp_path, monkeypatch)


def test_a_member_read_past_its_limit_is_stopped(package, monkeypatch):
    # zipfile already stops at the declared size; the reader's own count stops at the limit regardless
    monkeypatch.setitem(saved.MAX_MEMBER_BYTES, "model.safetensors", 1000)
    monkeypatch.setattr(saved, "_READ_CHUNK", 256)
    with zipfile.ZipFile(package) as zf:
        info = zf.getinfo("model.safetensors")
        with pytest.raises(
            ModelLoadError, match=r"model\.safetensors: holds more than the 1000 bytes allowed"
        ):
            saved._read_member(zf, info, package)


def test_not_a_zip_and_a_truncated_package_are_refused(package, tmp_path, monkeypatch):
    folder = tmp_path / "pkg"
    folder.mkdir()
    fake = folder / "fake.retinaseg.zip"
    fake.write_text("this is not a zip file\n")
    _refused(fake, "is a file but not a model package", tmp_path, monkeypatch)
    data = package.read_bytes()
    cut = folder / "cut.retinaseg.zip"
    cut.write_bytes(data[: len(data) // 2])
    _refused(cut, "is a file but not a model package .*cut short", tmp_path, monkeypatch)
    empty = folder / "empty.zip"
    empty.write_bytes(b"")
    _refused(empty, "is a file but not a model package", tmp_path, monkeypatch)
    # damaged inside, its directory intact: the CRC check catches it
    damaged = folder / "damaged.retinaseg.zip"
    offset = data.find(b'"format_version"')
    damaged.write_bytes(data[:offset] + b"X" + data[offset + 1 :])
    _refused(damaged, "not a readable zip file, damaged or truncated", tmp_path, monkeypatch)


# ------------------------------------------------------------------------------------ atomic export


def test_a_failed_export_leaves_the_existing_file_untouched(model_dir, tmp_path, monkeypatch):
    from retinaseg.core.errors import WriteError
    from retinaseg.models import package as package_module

    out = tmp_path / "out" / "unet.retinaseg.zip"
    out.parent.mkdir()
    out.write_bytes(b"the previous package")
    with pytest.raises(ModelLoadError, match="no such file"):
        export_model(tmp_path / "missing-model", out)
    assert out.read_bytes() == b"the previous package"

    def half_written(path: Path, members: dict[str, bytes]) -> None:
        path.write_bytes(b"PK\x03\x04 half a package")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(package_module, "_zip_bytes_to", half_written)
    with pytest.raises(WriteError, match=rf"{out}: No space left on device"):
        export_model(model_dir, out)
    assert out.read_bytes() == b"the previous package"
    assert sorted(p.name for p in out.parent.iterdir()) == ["unet.retinaseg.zip"]  # no temporary file left


def test_export_to_a_folder_is_refused(model_dir, tmp_path):
    with pytest.raises(ExportError, match=rf"{tmp_path}: is a folder; a model package is one file"):
        export_model(model_dir, tmp_path)


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_export_prints_what_it_wrote(model_dir, tmp_path, capsys):
    out = tmp_path / "unet.retinaseg.zip"
    assert main(["model", "export", "--model", str(model_dir), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    size_kb = out.stat().st_size / 1000
    assert lines[0] == (
        f"exported {model_dir} -> {out} ({size_kb:.1f} kB): unet, "
        f"{sum(p.numel() for p in build_model('unet', TINY_UNET).parameters()):,} parameters, threshold 0.370"
    )
    assert lines[1] == f"run it:  retinaseg predict --model {out} <images or folders> --out <folder>"
    load_model(out)


@pytest.mark.parametrize("case", ["folder", "missing model", "bad package"])
def test_cli_export_errors_are_one_line_and_exit_2(model_dir, package, tmp_path, capsys, case):
    out = tmp_path / "out.zip"
    model = {"missing model": str(tmp_path / "nope"), "bad package": str(tmp_path / "bad.zip")}.get(
        case, str(model_dir)
    )
    (tmp_path / "bad.zip").write_text("not a zip")
    target = str(tmp_path) if case == "folder" else str(out)
    assert main(["model", "export", "--model", model, "--out", target]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = {
        "folder": f"error: {tmp_path}: is a folder; a model package is one file",
        "missing model": f"error: {tmp_path / 'nope'}: not a model directory or MLflow URI, and no such file",
        "bad package": f"error: {tmp_path / 'bad.zip'}: is a file but not a model package",
    }[case]
    assert len(err) == 1 and err[0].startswith(expected), err
    assert not out.exists()


def test_cli_export_needs_out(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["model", "export", "--model", "models/unet"])
    assert exc.value.code == 2
    assert "the following arguments are required: --out" in capsys.readouterr().err


def test_the_server_loads_a_package(package):
    from retinaseg.server import load_served_predictor

    predictor = load_served_predictor(package, device="cpu")
    assert predictor.card.name == "unet" and predictor.threshold == pytest.approx(0.37)


def _checkout_with_untuned_model(tmp_path: Path, threshold: float | None, chosen_on: str = "val") -> Path:
    """``<repo>/models/unet`` as training leaves it (no threshold in its card) and, when given,
    ``<repo>/reports/metrics/unet.json`` as evaluate@unet writes it."""
    repo = tmp_path / "repo"
    save_model_dir(train_tiny_unet(), _card(threshold=None), repo / "models" / "unet")
    if threshold is not None:
        metrics = repo / "reports" / "metrics" / "unet.json"
        metrics.parent.mkdir(parents=True)
        metrics.write_text(json.dumps({"protocol": {"threshold_from": chosen_on}, "threshold": threshold}))
    return repo / "models" / "unet"


def test_cli_export_of_a_trained_directory_takes_the_threshold_evaluate_chose(tmp_path, capsys):
    folder = _checkout_with_untuned_model(tmp_path, 0.412)
    out = tmp_path / "unet.retinaseg.zip"
    assert main(["model", "export", "--model", str(folder), "--out", str(out)]) == 0
    assert "threshold 0.412" in capsys.readouterr().out
    _, card = load_model(out)
    assert card.threshold == pytest.approx(0.412)
    assert card.extra["export"]["threshold_from"].endswith(
        "reports/metrics/unet.json (chosen on the val split)"
    )
    assert card.extra["export"]["threshold_inference"] == {"tta": False, "tta_scales": [1.0]}
    # --threshold wins; without a metrics file the package says it has none
    assert main(["model", "export", "--model", str(folder), "--out", str(out), "--threshold", "0.6"]) == 0
    assert load_model(out)[1].threshold == pytest.approx(0.6)
    bare = _checkout_with_untuned_model(tmp_path / "b", None)
    assert main(["model", "export", "--model", str(bare), "--out", str(out)]) == 0
    assert "threshold none stored (predict uses 0.5)" in capsys.readouterr().out
    assert load_model(out)[1].threshold is None


# ------------------------------------------------------- the test-time augmentation of the threshold

TTA_CHOSEN_ON = "val (flip TTA, scales 0.85, 1, 1.15)"  # what evaluate@unet writes with these params
TTA_PARAMS = "evaluate:\n  tta: true\n  tta_scales: [0.85, 1.0, 1.15]\n"


def _prob(folder: Path) -> np.ndarray:
    return np.asarray(Image.open(folder / "eye_prob.png"))


def test_a_package_predicts_with_the_tta_its_threshold_was_chosen_with(tmp_path, capsys):
    folder = _checkout_with_untuned_model(tmp_path, 0.412, TTA_CHOSEN_ON)
    (folder.parent.parent / "params.yaml").write_text(TTA_PARAMS)  # the params evaluate@unet ran with
    package = tmp_path / "unet.retinaseg.zip"
    assert main(["model", "export", "--model", str(folder), "--out", str(package)]) == 0
    words = "flip TTA, scales 0.85, 1, 1.15"
    assert (
        f"threshold 0.412 (chosen on maps with {words}: predict makes them the same way)"
        in capsys.readouterr().out
    )
    card = load_model(package)[1]
    assert card.extra["export"]["threshold_inference"] == {"tta": True, "tta_scales": [0.85, 1.0, 1.15]}
    assert "`--no-tta`" in _members(package)["MODEL_CARD.md"].decode()
    from retinaseg.server import load_served_predictor  # `retinaseg serve` makes its maps the same way

    served = load_served_predictor(package, device="cpu")
    assert served.settings.tta and served.settings.scales == (0.85, 1.0, 1.15)
    # exported again, the package keeps what it says of its threshold
    again = tmp_path / "again.retinaseg.zip"
    assert main(["model", "export", "--model", str(package), "--out", str(again)]) == 0
    assert load_model(again)[1].extra["export"] == card.extra["export"] | {"source": "package"}

    image = _fundus_png(tmp_path / "photos" / "eye.png")
    cpu = ["--device", "cpu"]
    assert (
        main(["predict", "--model", str(package), str(image), "--out", str(tmp_path / "as_chosen"), *cpu])
        == 0
    )
    assert (
        "threshold 0.412, flip TTA, scales 0.85, 1, 1.15 as the threshold was chosen"
        in capsys.readouterr().out
    )
    report = json.loads((tmp_path / "as_chosen" / "predict_report.json").read_text())
    assert (report["tta"], report["tta_scales"], report["tta_from"]) == (True, [0.85, 1.0, 1.15], "model")
    # the same maps as the model directory given every setting by hand
    by_hand = ["--tta", "--tta-scales", "0.85,1,1.15", "--threshold", "0.412", *cpu]
    assert (
        main(["predict", "--model", str(folder), str(image), "--out", str(tmp_path / "by_hand"), *by_hand])
        == 0
    )
    assert np.array_equal(_prob(tmp_path / "as_chosen"), _prob(tmp_path / "by_hand"))
    # told otherwise, it predicts otherwise
    plain = ["--no-tta", "--tta-scales", "1", *cpu]
    assert (
        main(["predict", "--model", str(package), str(image), "--out", str(tmp_path / "plain"), *plain]) == 0
    )
    report = json.loads((tmp_path / "plain" / "predict_report.json").read_text())
    assert (report["tta"], report["tta_scales"], report["tta_from"]) == (False, [1.0], "settings")
    assert not np.array_equal(_prob(tmp_path / "as_chosen"), _prob(tmp_path / "plain"))
    # a threshold given by hand is not the package's: the package's augmentation does not apply
    given = ["--threshold", "0.5", *cpu]
    assert (
        main(["predict", "--model", str(package), str(image), "--out", str(tmp_path / "given"), *given]) == 0
    )
    report = json.loads((tmp_path / "given" / "predict_report.json").read_text())
    assert (report["tta"], report["tta_scales"], report["tta_from"]) == (False, [1.0], "settings")
    capsys.readouterr()


def test_export_refuses_a_threshold_whose_augmentation_params_yaml_no_longer_gives(tmp_path, capsys):
    folder = _checkout_with_untuned_model(tmp_path, 0.412, TTA_CHOSEN_ON)
    out = tmp_path / "unet.retinaseg.zip"
    assert main(["model", "export", "--model", str(folder), "--out", str(out)]) == 2  # no params.yaml
    err = capsys.readouterr().err
    assert (
        "reports/metrics/unet.json: its threshold was chosen on val (flip TTA, scales 0.85, 1, 1.15) maps"
        in err
    )
    assert "pass --threshold" in err
    (folder.parent.parent / "params.yaml").write_text("evaluate:\n  tta: true\n")  # the scales changed since
    assert main(["model", "export", "--model", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "now make 'val (flip TTA)' ones: run `dvc repro evaluate@unet` first, or pass --threshold" in err
    assert not out.exists()
    # --threshold: the package records no augmentation for a threshold given by hand
    assert main(["model", "export", "--model", str(folder), "--out", str(out), "--threshold", "0.4"]) == 0
    assert "threshold_inference" not in load_model(out)[1].extra["export"]


@pytest.mark.parametrize(
    "record",
    [
        {"tta": "yes", "tta_scales": [1.0]},
        {"tta": False, "tta_scales": [1.0, 1.0]},
        {"tta": True, "tta_scales": [9]},
    ],
)
def test_predict_refuses_a_malformed_augmentation_record(package, tmp_path, capsys, record):
    members = _members(package)
    card = json.loads(members["model.json"])
    card["extra"]["export"]["threshold_inference"] = record
    members["model.json"] = json.dumps(card).encode()
    bad = _write_zip(tmp_path / "bad.retinaseg.zip", sorted(members.items()))
    image = _fundus_png(tmp_path / "eye.png")
    assert (
        main(["predict", "--model", str(bad), str(image), "--out", str(tmp_path / "out"), "--device", "cpu"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"error: {bad}: model card key 'extra.export.threshold_inference'"
    )
