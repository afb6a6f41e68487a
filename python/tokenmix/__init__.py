"""tokenmix: attention and token-mixing layers with PyTorch parity, offline and streaming.

Runs trained upstream PyTorch modules (ESPnet multi-head attention and Fastformer, continual-inference's
continual attention, SpeechBrain's HyperMixing, labml.ai's multi-head and Primer-EZ attentions) in C++
with the same outputs, without an export step:

    layer = tokenmix.from_torch(module)   # reads constructor arguments and state_dict
    out = layer(*args, **kwargs)          # the upstream forward signature and return structure
    tokenmix.save(module, "m.safetensors"); tokenmix.load("m.safetensors")
    s = layer.stream(batch=1, ...); s.push(chunk)
    tokenmix.torch.accelerate(model)      # swap every supported submodule in a model

Errors are ValueError with a message naming the function and argument.
"""
from ._core import get_num_threads, kernel_isa, set_num_threads
from ._layers import (ContinualMultiheadAttention, EspnetMultiHeadedAttention, FastSelfAttention, HyperMixing,
                      LabmlMultiHeadAttention, Layer, RetroactiveMultiheadAttention, SingleOutputMultiheadAttention)
from ._registry import from_torch, load, make_layer, save, supported_modules
from ._stream import Stream

__version__ = "0.1.0"

__all__ = [
    "ContinualMultiheadAttention", "EspnetMultiHeadedAttention", "FastSelfAttention", "HyperMixing",
    "LabmlMultiHeadAttention", "Layer", "RetroactiveMultiheadAttention", "SingleOutputMultiheadAttention", "Stream",
    "from_torch", "get_num_threads", "kernel_isa", "load", "make_layer", "save", "set_num_threads", "supported_modules",
]
