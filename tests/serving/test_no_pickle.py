"""The logged pyfunc model is code plus weights: no pickle in its artifacts, and loading it (as
``mlflow models serve`` does) unpickles nothing; the weights go through ``torch.load(weights_only=True)``."""

from __future__ import annotations

import pickle
from pathlib import Path

import pandas as pd
import pytest

from retinaseg.serving import MODEL_CODE_FILE, encode_image_b64, load_served_mask
from tests.serving.helpers import png_bytes, toy_fundus

PICKLE_SUFFIXES = {".pkl", ".pickle", ".pck", ".joblib", ".cloudpickle", ".dill"}
PICKLE_STREAM_STARTS = tuple(b"\x80" + bytes([protocol]) for protocol in range(2, 6))


@pytest.fixture()
def logged_model(tiny_model_dir, mlflow_uri, tmp_path, monkeypatch) -> tuple[str, Path]:
    """The tiny model logged with ``log_pyfunc_model`` (its URI, and its artifacts downloaded)."""
    import mlflow

    from retinaseg.serving import log_pyfunc_model

    monkeypatch.chdir(tmp_path)  # the sqlite store's artifacts (./mlruns) stay in tmp_path
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("no-pickle")
    with mlflow.start_run():
        info = log_pyfunc_model(tiny_model_dir, 0.5)
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "download")))
    yield info.model_uri, local
    mlflow.set_tracking_uri(None)


def test_logged_model_holds_code_and_weights_but_no_pickle(logged_model):
    import torch
    import yaml

    _, local = logged_model
    files = sorted(p for p in local.rglob("*") if p.is_file())
    names = {p.relative_to(local).as_posix() for p in files}
    model_files = {"artifacts/model_dir/model.pt", "artifacts/model_dir/model.json"}
    assert {"MLmodel", MODEL_CODE_FILE, *model_files} <= names
    for path in files:
        assert path.suffix.lower() not in PICKLE_SUFFIXES, path
        assert not path.read_bytes()[:2].startswith(PICKLE_STREAM_STARTS), f"{path} is a pickle stream"
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert Path(flavor["model_code_path"]).name == MODEL_CODE_FILE
    assert "python_model" not in flavor  # the key under which a pickled PythonModel is found
    code = (local / MODEL_CODE_FILE).read_text()
    assert "set_model(VesselSegmenter())" in code and "pickle" not in code.replace("no pickle", "")
    # model.pt is torch's zip archive of tensors: it loads under the restricted unpickler
    state = torch.load(local / "artifacts" / "model_dir" / "model.pt", weights_only=True)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())


def test_loading_the_logged_model_unpickles_nothing(logged_model, monkeypatch):
    import cloudpickle
    import mlflow
    import torch

    uri, _ = logged_model

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled while loading the model")

    class RefusingUnpickler:
        def __init__(self, *args, **kwargs):
            refuse()

    for module in (pickle, cloudpickle):
        monkeypatch.setattr(module, "load", refuse)
        monkeypatch.setattr(module, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", RefusingUnpickler)
    real_load = torch.load
    calls = []

    def weights_only_load(*args, **kwargs):
        assert kwargs.get("weights_only") is True, "torch.load without weights_only=True"
        calls.append(args[0])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", weights_only_load)
    model = mlflow.pyfunc.load_model(uri)
    assert calls and Path(calls[0]).name == "model.pt"
    frame = pd.DataFrame({"image": [encode_image_b64(png_bytes(toy_fundus(5, 33, 47)[0]))]})
    out = model.predict(frame)
    assert out.loc[0, "error"] == "" and load_served_mask(out.loc[0, "mask"]).shape == (33, 47)


def test_signature_is_declared_and_matches_what_predict_returns(
    tiny_model_dir, mlflow_uri, tmp_path, monkeypatch
):
    """Logging warns of nothing (an inferred signature made MLflow warn about integer columns), and the
    logged signature names the columns, in order and type, that the loaded model returns."""
    import warnings

    import mlflow

    from retinaseg.serving import OUTPUT_COLUMNS, log_pyfunc_model

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("signature")
    try:
        with warnings.catch_warnings(record=True) as caught, mlflow.start_run():
            warnings.simplefilter("always")
            info = log_pyfunc_model(tiny_model_dir, 0.35)
        assert not [w for w in caught if "schema" in str(w.message).lower()], [str(w.message) for w in caught]
        signature = mlflow.models.get_model_info(info.model_uri).signature
        assert signature.inputs.input_names() == ["image"]
        assert signature.params.to_dict() == [
            {"name": "threshold", "default": 0.35, "shape": None, "type": "double"}
        ]
        outputs = {col.name: col.type.name for col in signature.outputs.inputs}
        assert tuple(outputs) == OUTPUT_COLUMNS
        model = mlflow.pyfunc.load_model(info.model_uri)
        images = [encode_image_b64(png_bytes(toy_fundus(5, 33, 47)[0])), "not base64 at all"]
        out = model.predict(pd.DataFrame({"image": images}))
        pandas_dtypes = {
            "string": {"object", "str"},
            "double": {"float64"},
            "long": {"int64"},
        }  # str: pandas 3
        assert list(out.columns) == list(outputs)
        for name, kind in outputs.items():
            assert str(out[name].dtype) in pandas_dtypes[kind], (name, out[name].dtype, kind)
        assert out.loc[0, "error"] == "" and out.loc[1, "error"] and out.loc[1, "width"] == 0
    finally:
        mlflow.set_tracking_uri(None)
