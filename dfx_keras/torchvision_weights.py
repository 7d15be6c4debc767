"""torchvision's ImageNet weights on the torchvision-layout backbones: ``--weights=torchvision:FILE``.

The reference fine-tunes torchvision's ImageNet weights, not the ones keras.applications
downloads. FILE is a torchvision state dict (``model.state_dict()``, or the ``.pth`` file
torchvision downloads) read with torch when torch is importable, or a ``.safetensors`` copy of
it read with the safetensors package and NumPy (no torch needed); see ``CONVERT_COMMAND``.

Tensors are matched to the Keras model's layers by name (the layers carry torchvision's module
names, see ``dfx_keras.architectures``) and by shape. Any tensor without a place in the model,
any of the model's tensors missing from the file, and any shape that differs fail, naming the
tensors. The classifier's tensors are skipped: the backbone ends at its pooled features, and a
fine-tuned model's classifier (the reference's 2-way heads) has another shape.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from typing import Callable

import numpy as np

PREFIX = "torchvision:"
# Where torch is installed, once per file (the README shows it too).
CONVERT_COMMAND = ('python -c "import sys, torch; from safetensors.torch import save_file; '
                   'save_file(torch.load(sys.argv[1], map_location=\'cpu\'), sys.argv[2])" MODEL.pth MODEL.safetensors')
CLASSIFIERS = ("fc.", "classifier.", "heads.")  # ResNet, DenseNet, ViT
# Names in torchvision's own download files that torchvision renames while loading them:
# DenseNet's 2017 files "denselayer1.norm.1" (now "norm1"), ViT's pre-0.13 "mlp.linear_1" (now "mlp.0").
_LEGACY_NAMES = (
    (re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"),
     lambda m: m.group(1) + m.group(2)),
    (re.compile(r"^(.*\.mlp\.)linear_([12])\.(weight|bias)$"),
     lambda m: f"{m.group(1)}{3 * (int(m.group(2)) - 1)}.{m.group(3)}"),
)
_LISTED = 5  # names shown per kind of mismatch


class StateDictError(ValueError):
    """A weights file that cannot be read, or does not fit the backbone; one line."""


def file_of(weights: str | None) -> str | None:
    """FILE of a ``torchvision:FILE`` weights argument; None for any other."""
    return weights[len(PREFIX):] if weights and weights.startswith(PREFIX) else None


def check_readable(path: str) -> None:
    """Fail before any heavy work when ``path`` is missing or is a ``.pth`` without torch."""
    if not os.path.isfile(path):
        raise StateDictError(f"--weights=torchvision: file not found: {path}")
    if not path.endswith(".safetensors") and importlib.util.find_spec("torch") is None:
        raise StateDictError(f"reading {path} needs torch, which is not installed; convert it once where torch is "
                             f"(or pass a .safetensors copy): {CONVERT_COMMAND}")


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(path)


def _read_torch(path: str) -> dict[str, np.ndarray]:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StateDictError(f"{path} is not a state dict of tensors (save model.state_dict())")
    return {name: (t.float() if t.is_floating_point() else t).numpy() for name, t in state.items()}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` or torch-saved state dict, as NumPy arrays."""
    check_readable(path)
    read = _read_safetensors if path.endswith(".safetensors") else _read_torch
    try:
        return read(path)
    except StateDictError:
        raise
    except Exception as e:  # each format has its own errors for a damaged file
        raise StateDictError(f"cannot read {path}: {type(e).__name__}: {e}".splitlines()[0]) from None


def current_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``state`` with torchvision's legacy names replaced by the current ones."""
    renamed = {}
    for name, tensor in state.items():
        for pattern, replace in _LEGACY_NAMES:
            name = pattern.sub(replace, name)
        renamed[name] = tensor
    return renamed


# --- where each tensor goes --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Slot:
    """One torchvision tensor's place in the Keras model: its torch shape and how to store it."""

    shape: tuple[int, ...]
    store: Callable[[np.ndarray], None]
    required: bool = True


def _variable(variable, to_torch: tuple[int, ...] | None = None) -> Slot:
    """A tensor that is one Keras variable, its axes in torch order ``to_torch`` (a permutation)."""
    to_torch = to_torch or tuple(range(len(variable.shape)))
    shape = tuple(int(variable.shape[axis]) for axis in to_torch)
    return Slot(shape, lambda tensor: variable.assign(np.transpose(tensor, np.argsort(to_torch))))


def _stacked(variables, to_keras: Callable[[np.ndarray], np.ndarray], shape: tuple[int, ...]) -> Slot:
    """A tensor that is several Keras variables stacked on its first axis (attention's q, k, v)."""
    def store(tensor):
        for variable, part in zip(variables, np.split(tensor, len(variables))):
            variable.assign(to_keras(part).reshape(variable.shape))
    return Slot(shape, store)


def _attention_slots(layer, name: str) -> dict[str, Slot]:
    """``nn.MultiheadAttention``: fused ``in_proj`` (q, k, v rows) and ``out_proj``, (out, in) matrices."""
    projections = (layer.query_dense, layer.key_dense, layer.value_dense)
    dim, out = int(layer.query_dense.kernel.shape[0]), layer.output_dense
    width = int(np.prod(layer.query_dense.kernel.shape[1:]))  # heads x head size
    return {
        f"{name}.in_proj_weight": _stacked([p.kernel for p in projections], np.transpose, (3 * width, dim)),
        f"{name}.in_proj_bias": _stacked([p.bias for p in projections], np.asarray, (3 * width,)),
        f"{name}.out_proj.weight": Slot((dim, width), lambda t: out.kernel.assign(t.T.reshape(out.kernel.shape))),
        f"{name}.out_proj.bias": _variable(out.bias),
    }


def slots(layer) -> dict[str, Slot]:
    """The torchvision tensors of one Keras layer, by torchvision name (the layer's name)."""
    # Keras is imported here, not above: the parity benchmark reads .pth files with this module
    # in a torch venv without Keras.
    from keras import layers

    from dfx_keras.architectures import vit

    name = layer.name
    if isinstance(layer, layers.Conv2D):  # (kh, kw, in, out) <- (out, in, kh, kw)
        found = {f"{name}.weight": _variable(layer.kernel, (3, 2, 0, 1))}
        return found | ({f"{name}.bias": _variable(layer.bias)} if layer.use_bias else {})
    if isinstance(layer, layers.BatchNormalization):
        return {f"{name}.weight": _variable(layer.gamma), f"{name}.bias": _variable(layer.beta),
                f"{name}.running_mean": _variable(layer.moving_mean),
                f"{name}.running_var": _variable(layer.moving_variance),
                # PyTorch's step counter: unused (momentum is fixed), absent from pre-2018 checkpoints.
                f"{name}.num_batches_tracked": Slot((), lambda tensor: None, required=False)}
    if isinstance(layer, layers.LayerNormalization):
        return {f"{name}.weight": _variable(layer.gamma), f"{name}.bias": _variable(layer.beta)}
    if isinstance(layer, layers.Dense):  # (in, out) <- (out, in)
        return {f"{name}.weight": _variable(layer.kernel, (1, 0)), f"{name}.bias": _variable(layer.bias)}
    if isinstance(layer, layers.MultiHeadAttention):
        return _attention_slots(layer, name)
    if isinstance(layer, (vit.ClassToken, vit.PositionEmbedding)):
        return {name: _variable(layer.weights[0])}
    if layer.weights:
        raise TypeError(f"no torchvision mapping for layer {name!r} ({type(layer).__name__})")
    return {}


def model_slots(model) -> dict[str, Slot]:
    """Every torchvision tensor a torchvision-layout Keras model holds."""
    found = {}
    for layer in model.layers:
        found.update(slots(layer))
    return found


def _listed(names: list[str]) -> str:
    more = f" (+{len(names) - _LISTED} more)" if len(names) > _LISTED else ""
    return ", ".join(names[:_LISTED]) + more


def match(state: dict[str, np.ndarray], model_tensors: dict[str, Slot], source: str, target: str) -> None:
    """Raise one line naming every kind of mismatch between a state dict and the model's slots."""
    missing = [n for n, slot in model_tensors.items() if slot.required and n not in state]
    unexpected = [n for n in state if n not in model_tensors and not n.startswith(CLASSIFIERS)]
    misshapen = [f"{n} is {tuple(state[n].shape)} in the file, {slot.shape} in the model"
                 for n, slot in model_tensors.items() if n in state and tuple(state[n].shape) != slot.shape]
    kinds = (("missing tensors", missing), ("unexpected tensors", unexpected), ("wrong shapes", misshapen))
    problems = [f"{label}: {_listed(names)}" for label, names in kinds if names]
    if problems:
        raise StateDictError(f"{source} does not fit {target}: " + "; ".join(problems))


def load_state_dict(model, path: str) -> None:
    """Store the state dict in ``path`` in ``model`` (a torchvision-layout backbone), or fail naming
    the tensors that do not fit; nothing is stored unless everything fits."""
    state = current_names(read_state_dict(path))
    model_tensors = model_slots(model)
    match(state, model_tensors, path, f"{model.name} (torchvision layout)")
    for name, slot in model_tensors.items():
        if name in state:
            slot.store(np.asarray(state[name], np.float32))
