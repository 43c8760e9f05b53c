"""Data layer: Hugging Face Hub by default, a local parquet mirror when one is configured, tensors cached."""

from fdlcli.data.hub import load_split, mirror_root
from fdlcli.data.tensors import ArraySplits, image_classification_arrays, minibatches

__all__ = ["ArraySplits", "image_classification_arrays", "load_split", "minibatches", "mirror_root"]
