"""The one inference API: preprocess → (tiled, batched) forward → probability map → threshold → back
to the input's size.

- :mod:`retinaseg.inference.predictor` — :class:`Predictor`, :class:`InferenceSettings` (tile size
  and overlap from params.yaml's ``evaluate`` group), :class:`Segmentation`; the functional core
  ``predict_batch``/``predict_proba`` and the sliding window.
- :mod:`retinaseg.inference.loading` — ``load_predictor(ref)`` for a model directory or an MLflow URI.
- :mod:`retinaseg.inference.inputs` — checks on files, uploads and payloads before decoding.
- :mod:`retinaseg.inference.files` — ``predict_paths``: segment files into a folder (``retinaseg predict``).
- :mod:`retinaseg.inference.overlays` — the probability tint and grey map.

The evaluate stage, ``retinaseg predict``, the MLflow pyfunc model, the web demo and the benchmarks
all predict through :class:`~retinaseg.inference.predictor.Predictor`.
"""
