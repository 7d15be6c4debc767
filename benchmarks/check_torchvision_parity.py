"""One-time check: our Keras backbones with torchvision's weights give torchvision's features.

torch and torchvision are not dependencies of the project, and checkpoints cannot be
downloaded here, so the check uses randomly initialised torchvision models moved away from their
initial values first: noise on every parameter (norms, biases, the class token), then BatchNorm
statistics from a few training-mode passes over images like the test's, so that every tensor
matters and the features have the scale of a trained model's (ResNets start from
``zero_init_residual``, as trained ResNets' small last-BatchNorm gammas). Two processes, so TensorFlow and torch never share a venv:

    # once: a scratch venv with torch (about 5.5 GB)
    python3 -m venv /work/scratch/torchenv
    /work/scratch/torchenv/bin/pip install torch==2.14.1 torchvision==0.29.1 safetensors numpy

    # 1. torch side: state dicts (.safetensors, one .pth, legacy-named copies), inputs, features
    PYTHONPATH=$PWD /work/scratch/torchenv/bin/python benchmarks/check_torchvision_parity.py torch --out=/tmp/parity
    # 2. Keras side (the project's venv): load each state dict with --weights=torchvision:FILE
    python benchmarks/check_torchvision_parity.py keras --out=/tmp/parity

The Keras side builds each base model exactly as train.py does (ImageNet mean/std
preprocessing chosen with the weights, ViT centre crop inside the model) on the same
256x256 images in [0, 255], and prints the largest absolute difference of the pooled features
per backbone. ``torch --tensor_list=FILE`` also writes torchvision's tensor names and shapes of
every model (the test suite compares our layouts against them without torch).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pathlib
import re
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

# our registry name: torchvision constructor
MODELS = {
    "densenet121": "densenet121", "densenet161": "densenet161", "densenet169": "densenet169",
    "densenet201": "densenet201", "resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50",
    "resnet101": "resnet101", "resnet152": "resnet152", "resnext101": "resnext101_32x8d",
    "vit_b16": "vit_b_16", "vit_b32": "vit_b_32",
}
IMAGE_SIZE, CROP, BATCH = 256, 224, 2
TOLERANCE = 1e-4
PTH_COPY = "resnet18"  # also written as .pth: the torch reader must give the same tensors
# Legacy-named copies, as torchvision's own download files name these tensors (its 2017 DenseNet
# files also predate BatchNorm's num_batches_tracked).
LEGACY_NAMES = {
    "densenet121": lambda k: re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k),
    "vit_b32": lambda k: k.replace(".mlp.0.", ".mlp.linear_1.").replace(".mlp.3.", ".mlp.linear_2."),
}


def torch_side(out: str, tensor_list: str | None) -> None:
    import torch
    import torchvision
    from safetensors.torch import save_file

    from dfx_keras import torchvision_weights

    torch.manual_seed(0)
    os.makedirs(out, exist_ok=True)
    images = torch.randint(0, 256, (BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)).float()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    normalised = (images / 255.0 - mean) / std
    np.save(os.path.join(out, "images.npy"), images.permute(0, 2, 3, 1).numpy())
    tensors, features = {}, {}
    for name, constructor in MODELS.items():
        start = time.time()
        vit = name.startswith("vit")
        # Trained ResNets' last BatchNorm of each block has small gammas; from torchvision's
        # default init (gamma 1) 100 random residual branches add up to features in the hundreds.
        options = {} if vit or name.startswith("densenet") else {"zero_init_residual": True}
        model = getattr(torchvision.models, constructor)(weights=None, **options)
        with torch.no_grad():
            for parameter in model.parameters():  # norms, biases, class token: away from 1 and 0
                parameter.add_(torch.randn_like(parameter) * (0.1 if parameter.dim() == 1 else 0.01))
        if not vit:  # BatchNorm statistics of images like the test's (cumulative average), not 0 and 1
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.momentum = None
            model.train()
            with torch.no_grad():
                for _ in range(3):
                    model((torch.randint(0, 256, (4, 3, IMAGE_SIZE, IMAGE_SIZE)) / 255.0 - mean) / std)
        model.eval()
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        tensors[name] = [[k, list(v.shape)] for k, v in state.items()]
        save_file(state, os.path.join(out, f"{name}.safetensors"))
        if name == PTH_COPY:
            path = os.path.join(out, f"{name}.pth")
            torch.save(model.state_dict(), path)
            read = torchvision_weights.read_state_dict(path)
            assert read.keys() == state.keys() and all(np.array_equal(read[k], state[k].numpy()) for k in state)
        if name in LEGACY_NAMES:
            legacy = {LEGACY_NAMES[name](k): v for k, v in state.items() if not k.endswith("num_batches_tracked")}
            assert len(set(legacy) - set(state)) > 10
            save_file(legacy, os.path.join(out, f"{name}.legacy.safetensors"))
        for head in ("fc", "classifier"):  # the pooled features
            if hasattr(model, head):
                setattr(model, head, torch.nn.Identity())
        if vit:
            model.heads = torch.nn.Identity()
        top = (IMAGE_SIZE - CROP) // 2
        inputs = normalised[:, :, top:top + CROP, top:top + CROP] if vit else normalised
        with torch.no_grad():
            features[name] = model(inputs).numpy()
        print(f"{name}: {len(state)} tensors, features {features[name].shape}, {time.time() - start:.0f} s", flush=True)
    np.savez(os.path.join(out, "features.npz"), **features)
    if tensor_list:
        with gzip.open(tensor_list, "wt") as f:
            json.dump({"torchvision": torchvision.__version__, "models": tensors}, f, separators=(",", ":"))


def keras_side(out: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from dfx_keras import models

    images = np.load(os.path.join(out, "images.npy"))
    reference = np.load(os.path.join(out, "features.npz"))
    worst = {}
    for name in MODELS:
        files = [f"{name}.safetensors"] + [f for f in (f"{name}.legacy.safetensors", f"{name}.pth")
                                           if os.path.exists(os.path.join(out, f))]
        for file in files:
            if file.endswith(".pth"):
                continue  # read on the torch side (no torch here); the tensors were compared there
            start = time.time()
            base = models.build_base_model(name, IMAGE_SIZE, f"torchvision:{os.path.join(out, file)}")
            features = models.feature_extractor(base)(images, training=False).numpy()
            diff = float(np.abs(features - reference[name]).max())
            scale = float(np.abs(reference[name]).max())
            worst[name] = max(worst.get(name, (0.0, scale)), (diff, scale))
            print(f"{file:32s} max |keras - torch| = {diff:.2e} (features up to {scale:.2f}), "
                  f"{time.time() - start:.0f} s", flush=True)
    print("\n| backbone | max abs difference | largest feature |\n| --- | --- | --- |")
    for name, (diff, scale) in worst.items():
        print(f"| {name} | {diff:.1e} | {scale:.2f} |")
    failed = [name for name, (diff, _) in worst.items() if diff > TOLERANCE]
    print(f"\n{len(worst) - len(failed)}/{len(worst)} backbones within {TOLERANCE:g}" +
          (f"; over: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("side", choices=("torch", "keras"))
    parser.add_argument("--out", default="/tmp/parity", help="folder shared by the two sides")
    parser.add_argument("--tensor_list", help="torch side: also write torchvision's tensor names and shapes here "
                        "(.json.gz)")
    args = parser.parse_args()
    torch_side(args.out, args.tensor_list) if args.side == "torch" else keras_side(args.out)


if __name__ == "__main__":
    main()
