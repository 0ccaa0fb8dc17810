"""The MLflow pyfunc model: in-process predictions, registration as @champion, and `mlflow models serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from retinaseg.serving import VesselSegmenter, encode_image_b64, load_served_mask
from tests.serving.helpers import png_bytes, png_header_only, stop_process_group, toy_fundus, wait_for_http_ok

SERVE_TIMEOUT_S = 90


def register_champion(model_dir: Path, threshold: float, f1: float) -> dict:
    """Register ``model_dir`` as a new version and promote it (checked: it must beat the champion)."""
    from retinaseg.registry import Evidence, promote, register_candidate

    evidence = Evidence("f1", f1, "0" * 64, "fov; threshold from val; test split")
    version = register_candidate("unet", model_dir, threshold, evidence, "retinaseg-vessels", "retinaseg")
    result = promote("retinaseg-vessels", version)
    assert result.promoted, result.message
    return {"name": "retinaseg-vessels", "version": version, "uri": result.uri}


def loaded_segmenter(model_dir: Path, threshold: float | None = None) -> VesselSegmenter:
    """A VesselSegmenter loaded the way MLflow does it (a context with artifacts and model_config)."""
    segmenter = VesselSegmenter()
    config = {} if threshold is None else {"threshold": threshold}
    segmenter.load_context(SimpleNamespace(artifacts={"model_dir": str(model_dir)}, model_config=config))
    return segmenter


def test_pyfunc_segments_good_rows_and_reports_bad_ones(tiny_model_dir):
    segmenter = loaded_segmenter(tiny_model_dir)
    good = toy_fundus(1, 45, 61)[0]
    frame = pd.DataFrame(
        {
            "image": [
                encode_image_b64(png_bytes(good)),
                "this is not base64!!",
                encode_image_b64(b"plain text, not an image"),
                encode_image_b64(png_header_only(100_000, 100_000)),
            ]
        }
    )
    out = segmenter.predict(None, frame)
    assert list(out.columns) == ["mask", "vessel_fraction", "width", "height", "error"]
    assert out.loc[0, "error"] == ""
    mask = load_served_mask(out.loc[0, "mask"])
    assert mask.shape == (45, 61) and set(np.unique(mask)) <= {0, 255}
    assert (out.loc[0, "width"], out.loc[0, "height"]) == (61, 45)
    assert out.loc[0, "vessel_fraction"] == pytest.approx((mask > 0).mean())
    assert "row 1" in out.loc[1, "error"] and "base64" in out.loc[1, "error"]
    assert "row 2" in out.loc[2, "error"] and "not an image" in out.loc[2, "error"]
    assert "row 3" in out.loc[3, "error"] and "pixels" in out.loc[3, "error"]
    assert (out.loc[1:, "mask"] == "").all()


def test_pyfunc_threshold_param_and_missing_column(tiny_model_dir):
    segmenter = loaded_segmenter(tiny_model_dir, threshold=0.5)
    frame = pd.DataFrame({"image": [encode_image_b64(png_bytes(toy_fundus(2, 40, 40)[0]))]})
    everything = segmenter.predict(None, frame, params={"threshold": 0.0})
    assert everything.loc[0, "vessel_fraction"] == 1.0
    with pytest.raises(ValueError, match="'image' column"):
        segmenter.predict(None, pd.DataFrame({"picture": ["x"]}))
    with pytest.raises(ValueError, match="threshold"):
        segmenter.predict(None, frame, params={"threshold": 2.0})


def test_pyfunc_tiles_with_the_settings_stored_with_the_model(tiny_model_dir):
    assert loaded_segmenter(tiny_model_dir).predictor.settings.tile_size == 1024  # params.yaml's
    segmenter = VesselSegmenter()
    config = {"threshold": 0.5, "tile_size": 32, "tile_overlap": 0.5}
    segmenter.load_context(SimpleNamespace(artifacts={"model_dir": str(tiny_model_dir)}, model_config=config))
    settings = segmenter.predictor.settings
    assert (settings.tile_size, settings.tile_overlap) == (32, 0.5)
    frame = pd.DataFrame({"image": [encode_image_b64(png_bytes(toy_fundus(2, 60, 70)[0]))]})
    tiled = load_served_mask(segmenter.predict(None, frame).loc[0, "mask"])
    assert tiled.shape == (60, 70)


@pytest.fixture()
def champion(tiny_model_dir, mlflow_uri, tmp_path, monkeypatch):
    """The tiny model logged as a pyfunc model and registered as retinaseg-vessels@champion."""
    import mlflow

    monkeypatch.chdir(tmp_path)  # anything MLflow puts in ./mlruns stays out of the repository
    yield register_champion(tiny_model_dir, threshold=0.5, f1=0.5)
    # MLflow keeps a process-wide tracking URI once anything sets it: forget this test's tmp store
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_register_champion_and_load_by_alias(champion, tiny_model_dir, tmp_path):
    import mlflow

    from retinaseg.inference.files import predict_paths

    assert champion["name"] == "retinaseg-vessels" and champion["version"] == 1
    assert champion["uri"] == "models:/retinaseg-vessels@champion"
    client = mlflow.MlflowClient()
    assert int(client.get_model_version_by_alias("retinaseg-vessels", "champion").version) == 1

    model = mlflow.pyfunc.load_model(champion["uri"])
    frame = pd.DataFrame(
        {
            "image": [
                encode_image_b64(png_bytes(toy_fundus(i, h, w)[0]))
                for i, (h, w) in enumerate([(50, 37), (64, 70)])
            ]
        }
    )
    out = model.predict(frame)
    assert [load_served_mask(m).shape for m in out["mask"]] == [(50, 37), (64, 70)]

    # the registered model's artifacts hold model.json + model.pt: `retinaseg predict` loads it by alias
    image_path = tmp_path / "in" / "eye.png"
    image_path.parent.mkdir()
    image_path.write_bytes(png_bytes(toy_fundus(7, 41, 43)[0]))
    report = predict_paths([image_path], champion["uri"], tmp_path / "out", device="cpu")
    assert report["n_ok"] == 1 and report["threshold"] == 0.5

    # a second registration moves the alias to version 2, which serves with its own threshold
    again = register_champion(tiny_model_dir, threshold=0.0, f1=0.6)  # better: promoted
    assert again["version"] == 2
    assert int(client.get_model_version_by_alias("retinaseg-vessels", "champion").version) == 2
    assert out["vessel_fraction"].max() < 1.0
    assert mlflow.pyfunc.load_model(again["uri"]).predict(frame)["vessel_fraction"].tolist() == [1.0, 1.0]
    # ...and `retinaseg predict` by alias uses the registered threshold too (it is in the model card)
    report = predict_paths([image_path], again["uri"], tmp_path / "out2", device="cpu")
    assert report["threshold"] == 0.0


@pytest.mark.slow
def test_mlflow_models_serve_invocations(champion, mlflow_uri, free_port, tmp_path):
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    # mlflow execs `uvicorn` by name: the venv's bin folder must be on PATH, as it is for an activated venv
    path = os.pathsep.join([str(mlflow_cli.parent), os.environ.get("PATH", "")])
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "PATH": path}
    log = tmp_path / "serve.log"
    cmd = [
        str(mlflow_cli),
        "models",
        "serve",
        "-m",
        champion["uri"],
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(free_port),
        "-w",
        "1",
    ]
    with log.open("wb") as log_fh:
        proc = subprocess.Popen(cmd, env=env, stdout=log_fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_http_ok(
                f"http://127.0.0.1:{free_port}/ping", proc, log, "mlflow models serve", SERVE_TIMEOUT_S
            )
            image = toy_fundus(3, 57, 49)[0]
            body = json.dumps(
                {"dataframe_split": {"columns": ["image"], "data": [[encode_image_b64(png_bytes(image))]]}}
            )
            request = urllib.request.Request(
                f"http://127.0.0.1:{free_port}/invocations",
                data=body.encode(),
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as resp:
                    payload = json.loads(resp.read())
            except (urllib.error.URLError, TimeoutError) as exc:
                body = exc.read().decode(errors="replace") if isinstance(exc, urllib.error.HTTPError) else ""
                pytest.fail(
                    f"/invocations failed: {exc} {body[:2000]}\nserver log:\n{log.read_text()[-3000:]}"
                )
        finally:
            stop_process_group(proc)
    rows = payload["predictions"]
    assert len(rows) == 1 and rows[0]["error"] == ""
    assert load_served_mask(rows[0]["mask"]).shape == (57, 49)
    assert (rows[0]["width"], rows[0]["height"]) == (49, 57)
