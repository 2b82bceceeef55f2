"""normlab: compare BatchNorm, LayerNorm and GroupNorm (and L1/L2) on small image classifiers."""

__version__ = "0.1.0"

from .checkpoint import load_model  # noqa: E402

__all__ = ["load_model", "__version__"]
