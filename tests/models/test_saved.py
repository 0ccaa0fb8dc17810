"""The saved-model format and the encoder-weights options of resnet34_unet."""

from __future__ import annotations

import json

import pytest
import torch

from retinaseg.core.config import PreprocessParams
from retinaseg.models.factory import ResNet34UNet, build_model
from retinaseg.models.saved import ModelCard, ModelLoadError, load_model, load_model_dir, save_model_dir
from tests.tiny import TINY_UNET


def _trained_a_little(model: torch.nn.Module) -> torch.nn.Module:
    """One optimiser step so BN running stats and weights differ from a fresh init."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    model(torch.randn(2, 3, 64, 64)).mean().backward()
    opt.step()
    return model


def _card(name: str, params: dict) -> ModelCard:
    return ModelCard(name, params, PreprocessParams(size=64), threshold=0.42, extra={"train_size": 64})


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("unet", TINY_UNET),
        ("attention_unet", TINY_UNET),
        ("unet", {**TINY_UNET, "norm": "instance"}),
        ("attention_unet", {**TINY_UNET, "norm": "none"}),
        ("resnet34_unet", {"encoder_weights": None}),
    ],
)
def test_round_trip_gives_identical_outputs(tmp_path, name, params):
    torch.manual_seed(0)
    model = _trained_a_little(build_model(name, params)).eval()
    x = torch.randn(1, 3, 29, 33)
    with torch.no_grad():
        expected = model(x)
    assert torch.isfinite(expected).all()
    save_model_dir(model, _card(name, params), tmp_path / name)
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["model.json", "model.pt"]
    loaded, card = load_model_dir(tmp_path / name)
    assert not loaded.training
    assert card == _card(name, params)
    assert card.preprocess_params() == PreprocessParams(size=64)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    loaded_again, _ = load_model(str(tmp_path / name), device="cpu")
    with torch.no_grad():
        assert torch.equal(loaded_again(x), expected)


def test_imagenet_card_reloads_without_download(tmp_path):
    # a model trained from ImageNet weights must reload offline: load_model_dir forces encoder_weights=None
    torch.manual_seed(0)
    model = build_model("resnet34_unet", {"encoder_weights": None})
    save_model_dir(model, _card("resnet34_unet", {"encoder_weights": "imagenet"}), tmp_path)
    loaded, card = load_model_dir(tmp_path)
    assert card.model_params == {"encoder_weights": "imagenet"}
    assert torch.equal(loaded.encoder.conv1.weight, model.encoder.conv1.weight)


def test_compiled_or_wrapped_model_saves_plain_keys(tmp_path):
    model = build_model("unet", TINY_UNET)
    wrapped = torch.nn.DataParallel(model)
    save_model_dir(wrapped, _card("unet", TINY_UNET), tmp_path)
    keys = torch.load(tmp_path / "model.pt", weights_only=True).keys()
    assert not any(k.startswith("module.") for k in keys)
    load_model_dir(tmp_path)


def test_wrong_state_dict_is_a_model_load_error(tmp_path):
    save_model_dir(build_model("unet", TINY_UNET), _card("unet", TINY_UNET), tmp_path)
    card = json.loads((tmp_path / "model.json").read_text())
    card["model_params"]["base_channels"] = 8  # the card now disagrees with the weights
    (tmp_path / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match=r"model\.pt: weights do not match the 'unet' architecture"):
        load_model_dir(tmp_path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ModelLoadError, match="model directory not found"):
        load_model_dir(tmp_path / "nope")
    tmp_path.joinpath("m").mkdir()
    with pytest.raises(ModelLoadError, match=r"m/model\.json: missing model\.json"):
        load_model_dir(tmp_path / "m")
    (tmp_path / "m" / "model.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_model_dir(tmp_path / "m")
    (tmp_path / "m" / "model.json").write_text(
        json.dumps({"name": "vnet", "model_params": {}, "preprocess": {}})
    )
    with pytest.raises(ModelLoadError, match="unknown model 'vnet'"):
        load_model_dir(tmp_path / "m")
    (tmp_path / "m" / "model.json").write_text(json.dumps({"name": "unet", "model_params": TINY_UNET}))
    with pytest.raises(ModelLoadError, match="missing key.*preprocess"):
        load_model_dir(tmp_path / "m")
    good = {"name": "unet", "model_params": TINY_UNET, "preprocess": {"size": 64}}
    (tmp_path / "m" / "model.json").write_text(json.dumps(good))
    with pytest.raises(ModelLoadError, match=r"model\.pt: missing model\.pt"):
        load_model_dir(tmp_path / "m")
    (tmp_path / "m" / "model.pt").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="not a loadable state_dict"):
        load_model_dir(tmp_path / "m")


def test_pickled_object_is_refused(tmp_path):
    # a full pickled module (not a state_dict) must not be unpickled
    model = build_model("unet", TINY_UNET)
    save_model_dir(model, _card("unet", TINY_UNET), tmp_path)
    torch.save(model, tmp_path / "model.pt")
    with pytest.raises(ModelLoadError, match="not a loadable state_dict"):
        load_model_dir(tmp_path)


def test_load_model_rejects_other_references(tmp_path):
    with pytest.raises(ModelLoadError, match="not a model directory or MLflow URI"):
        load_model(tmp_path / "missing")
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_model(tmp_path / "model.pt")


def test_save_is_atomic_and_keeps_old_files_on_failure(tmp_path):
    model = build_model("unet", TINY_UNET)
    save_model_dir(model, _card("unet", TINY_UNET), tmp_path)
    before = (tmp_path / "model.pt").read_bytes(), (tmp_path / "model.json").read_text()
    bad_card = _card("unet", TINY_UNET)
    bad_card.extra["not_json"] = object()
    with pytest.raises(ValueError, match="cannot be written as JSON"):
        save_model_dir(model, bad_card, tmp_path)
    assert ((tmp_path / "model.pt").read_bytes(), (tmp_path / "model.json").read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.pt"]


def test_card_extra_with_numpy_and_paths_is_stored_as_json(tmp_path):
    import numpy as np

    card = _card("unet", TINY_UNET)
    card.extra.update(best=np.float32(0.5), data=tmp_path / "d", epoch=torch.tensor(3))
    save_model_dir(build_model("unet", TINY_UNET), card, tmp_path)
    _, loaded = load_model_dir(tmp_path)
    assert loaded.extra == {"train_size": 64, "best": 0.5, "data": (tmp_path / "d").as_posix(), "epoch": 3}


def test_card_validation():
    with pytest.raises(ValueError, match="threshold"):
        ModelCard("unet", TINY_UNET, {}, threshold=1.5)
    with pytest.raises(ValueError, match="unknown key.*colour"):
        ModelCard.from_dict({"name": "unet", "model_params": {}, "preprocess": {}, "colour": 1})
    card = ModelCard.from_dict(_card("unet", TINY_UNET).to_dict())
    assert card.threshold == 0.42 and card.extra == {"train_size": 64}


# --- resnet34_unet encoder weights -------------------------------------------------------------


def test_imagenet_without_network_names_the_flag(monkeypatch):
    import huggingface_hub.constants

    # offline mode makes the failure immediate instead of 30 s of retries; cached weights still load
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    try:
        model = build_model("resnet34_unet", {"encoder_weights": "imagenet"})
    except RuntimeError as exc:
        message = str(exc)
        assert "could not download the ImageNet weights" in message
        assert "-S models.resnet34_unet.encoder_weights=null" in message
        assert exc.__cause__ is not None and type(exc.__cause__).__name__ in message
    else:
        assert model is not None
        pytest.skip("ImageNet weights for resnet34 are cached on this machine; the error path cannot run")


def test_local_encoder_weights_are_loaded(tmp_path):
    torch.manual_seed(1)
    donor = ResNet34UNet(encoder_weights=None)
    torch.save(donor.encoder.state_dict(), tmp_path / "enc.pt")
    torch.save(donor.state_dict(), tmp_path / "whole.pt")  # a whole smp model: "encoder." keys
    torch.manual_seed(2)
    for file in ("enc.pt", "whole.pt"):
        model = build_model("resnet34_unet", {"encoder_weights": str(tmp_path / file)})
        assert torch.equal(model.encoder.conv1.weight, donor.encoder.conv1.weight)
        assert torch.equal(model.encoder.layer4[2].bn2.running_var, donor.encoder.layer4[2].bn2.running_var)


def test_bad_local_encoder_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder weights file not found.*encoder_weights=null"):
        build_model("resnet34_unet", {"encoder_weights": str(tmp_path / "missing.pt")})
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="wrong.pt: does not match the resnet34 encoder"):
        build_model("resnet34_unet", {"encoder_weights": str(tmp_path / "wrong.pt")})
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="expected a state_dict"):
        build_model("resnet34_unet", {"encoder_weights": str(tmp_path / "list.pt")})


@pytest.mark.slow
def test_load_model_from_mlflow_run_uri(tmp_path, mlflow_uri):
    import mlflow

    torch.manual_seed(0)
    model = build_model("unet", TINY_UNET).eval()
    save_model_dir(model, _card("unet", TINY_UNET), tmp_path / "saved")
    mlflow.set_tracking_uri(mlflow_uri)
    # an explicit experiment (and artifact folder): never the process-wide active experiment
    # another test may have left behind, never ./mlruns in the working directory
    experiment = mlflow.create_experiment("saved-model-test", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifacts(str(tmp_path / "saved"), artifact_path="nested/model_dir")
    loaded, card = load_model(f"runs:/{run.info.run_id}/nested", device="cpu")
    assert card.threshold == 0.42
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(ModelLoadError, match="could not download the MLflow model"):
        load_model("models:/no-such-model@champion")


def test_a_card_written_before_norm_replaced_batch_norm_still_loads(tmp_path):
    # model.json files written before models.<name>.norm carry batch_norm: true | false
    torch.manual_seed(0)
    model = _trained_a_little(build_model("unet", TINY_UNET)).eval()
    save_model_dir(model, _card("unet", TINY_UNET), tmp_path)
    card = json.loads((tmp_path / "model.json").read_text())
    card["model_params"] = {k: v for k, v in card["model_params"].items() if k != "norm"} | {"batch_norm": True}
    (tmp_path / "model.json").write_text(json.dumps(card))
    loaded, _ = load_model_dir(tmp_path)
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
