"""Model sources, layer walking and sequential layer-wise calibration."""

from nmx.model.sources import DEFAULT_MODEL, LoadedModel, load_model

__all__ = ["DEFAULT_MODEL", "LoadedModel", "load_model"]
