"""The three segmentation models and the saved-model format.

- :mod:`retinaseg.models.unet` — :class:`UNet` (Ronneberger et al., 2015), written here.
- :mod:`retinaseg.models.attention_unet` — :class:`AttentionUNet` (Oktay et al., 2018), written here.
- :mod:`retinaseg.models.factory` — ``build_model(name, params)``, ``count_parameters``; also wraps
  smp's ResNet34-UNet.
- :mod:`retinaseg.models.saved` — ``ModelCard``, ``save_model_dir``, ``load_model_dir``, ``load_model``
  (a directory, an MLflow URI or a package file), ``read_package``.
- :mod:`retinaseg.models.package` — ``export_model``: one self-contained, pickle-free package file.

Import from the submodules; this package exports nothing (``import retinaseg.models.unet`` does not
pay for importing segmentation-models-pytorch).
"""
