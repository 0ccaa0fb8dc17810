"""The bottom layer: typed configuration, errors, file I/O, devices, the repository and the MLflow store.

Everything above imports from here; nothing here imports from the layers above (see
``docs/architecture.md`` and ``tests/test_layers.py``).
"""
