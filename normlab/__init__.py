"""normlab: compare BatchNorm, LayerNorm and GroupNorm (and L1/L2) on small image classifiers."""

__version__ = "0.1.0"

__all__ = ["load_model", "__version__"]


def __getattr__(name: str):
    """`normlab.load_model`, imported on first use: `normlab --help` does not load torch."""
    if name == "load_model":
        from .checkpoint import load_model

        return load_model
    raise AttributeError(f"module 'normlab' has no attribute {name!r}")
