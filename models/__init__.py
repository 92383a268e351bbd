"""SOFT, SOFT-Norm and SwiftFormer backbones for MindSpore.

    >>> from models import create_model, list_models
    >>> net = create_model("soft_tiny", num_classes=1000)
"""
import os

# oneDNN's AVX-512 path falls back to a reference convolution kernel on some CPUs (70-150x slower);
# this must be set before the first convolution runs.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

from .checkpoint import CheckpointMismatchError, load_checkpoint_strict, load_pretrained, load_weights  # noqa: E402
from .cpu_switch import cpu_layer_enabled, is_accelerated  # noqa: E402
from .fuse import fuse_for_inference, inference_rewrites, is_fused  # noqa: E402
from .registry import create_model, list_models, model_family, register_model  # noqa: E402
from . import softmax_free_vision_transformer  # noqa: E402,F401  (registers the SOFT variants)
from . import swiftformer  # noqa: E402,F401

__all__ = ["create_model", "list_models", "register_model", "model_family", "load_checkpoint_strict",
           "load_weights", "load_pretrained", "CheckpointMismatchError", "fuse_for_inference", "inference_rewrites",
           "is_fused", "cpu_layer_enabled", "is_accelerated"]
