from .adapters import FAMILIES, SUPPORTED_MODEL_TYPES, ModelAdapter
from .loading import DEFAULT_MODEL, EMBEDDED_MODELS, load_model, resolve_source

__all__ = ["FAMILIES", "SUPPORTED_MODEL_TYPES", "ModelAdapter", "DEFAULT_MODEL", "EMBEDDED_MODELS", "load_model",
           "resolve_source"]
