"""retinaseg: reproducible retinal blood-vessel segmentation."""

__version__ = "0.1.0"
