"""tokenmix inside PyTorch models: ``accelerate(model)`` swaps every supported submodule for a
``torch.nn.Module`` that runs tokenmix with the same call signature and return structure."""
from __future__ import annotations

import torch

from ._registry import READERS, from_torch, qualified_name


class TokenmixModule(torch.nn.Module):
    """A torch module running a tokenmix layer: ``forward(*args, **kwargs)`` is the upstream module's
    (and ``step`` / ``forward_step`` / ``forward_steps`` / ``clean_state`` where upstream has them).

    Inference only: raises RuntimeError when called in training mode or with an input that requires
    gradients (tokenmix computes no gradients). Inputs must be CPU float32 tensors (ValueError
    otherwise); strided views, common inside models, are made contiguous here (a copy), unlike the
    layer API, which takes contiguous inputs only. ``layer`` is the tokenmix layer; ``replaced`` the
    upstream class name.
    """

    def __init__(self, layer, replaced: str, path: str):
        torch.nn.Module.__init__(self)  # not the upstream class's __init__ (see _replacement_class)
        self.layer = layer
        self.replaced = replaced
        self.path = path
        self.eval()

    def _call(self, method, args, kwargs):
        """layer.<method>(*args, **kwargs) after the inference-only checks, tensors made contiguous."""
        if self.training:
            raise RuntimeError(f"tokenmix.torch: {self.path} ({self.replaced}): inference only, but the module is in "
                               "training mode (call model.eval(); tokenmix computes no gradients)")
        for a in list(args) + list(kwargs.values()):
            if isinstance(a, torch.Tensor) and a.requires_grad and torch.is_grad_enabled():
                raise RuntimeError(f"tokenmix.torch: {self.path} ({self.replaced}): an input requires gradients; "
                                   "tokenmix is inference only (use torch.no_grad() or torch.inference_mode())")

        def contiguous(a):
            return a.contiguous() if isinstance(a, torch.Tensor) else a

        return getattr(self.layer, method)(*[contiguous(a) for a in args],
                                           **{k: contiguous(v) for k, v in kwargs.items()})

    def forward(self, *args, **kwargs):
        return self._call("forward", args, kwargs)

    def step(self, *args, **kwargs):
        return self._call("step", args, kwargs)

    def forward_step(self, *args, **kwargs):
        return self._call("forward_step", args, kwargs)

    def forward_steps(self, *args, **kwargs):
        return self._call("forward_steps", args, kwargs)

    def clean_state(self):
        self.layer.clean_state()

    def extra_repr(self) -> str:
        return f"{self.replaced}, {self.layer.config}"


_CLASSES = {}


def _replacement_class(upstream: type) -> type:
    """TokenmixModule specialised as a subclass of the upstream class, so that models which dispatch on
    isinstance (ESPnet's Branchformer on FastSelfAttention) still take the same branch; TokenmixModule
    comes first in the method order, so none of the upstream methods run."""
    if upstream not in _CLASSES:
        _CLASSES[upstream] = type("Tokenmix" + upstream.__name__, (TokenmixModule, upstream), {})
    return _CLASSES[upstream]


def accelerate(model: torch.nn.Module, precision: str = "fp32") -> dict:
    """Replaces, in place, every submodule of ``model`` whose class tokenmix supports by a
    TokenmixModule with the same weights and call signature (an instance of the upstream class too),
    its projections in ``precision`` (``"fp32"``, ``"bf16"``, ``"int8"`` or ``"auto"``; see
    ``tokenmix.make_layer``). Returns ``{path: original module}`` of what it replaced (empty when
    nothing was supported). Raises ValueError when the model is in training mode, when ``model``
    itself is a supported class (use ``tokenmix.from_torch`` for it), or for an unsupported precision."""
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"accelerate: model: expected a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("accelerate: model: in training mode; tokenmix is inference only (call model.eval() first)")
    if qualified_name(model) in READERS:
        raise ValueError(f"accelerate: model: is itself a {qualified_name(model)}; use tokenmix.from_torch(model)")
    replaced = {}
    for path, sub in list(model.named_modules()):
        if not path or qualified_name(sub) not in READERS or any(path.startswith(p + ".") for p in replaced):
            continue
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, attr, _replacement_class(type(sub))(from_torch(sub, precision), qualified_name(sub), path))
        replaced[path] = sub
    return replaced
