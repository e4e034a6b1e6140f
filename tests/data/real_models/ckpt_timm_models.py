"""Model classes of timm (a MobileNetV3 CNN and a ViT), built from small configurations with
random weights: nothing is downloaded. Each is a user's model as ``--model`` names it
(``ckpt_timm_models:cnn``), with this folder on PYTHONPATH, the library imported at the top as
users' modules do. Their forward returns a tensor. ``nox -s real`` runs the shipped scenarios
over every one."""

from __future__ import annotations

import timm
import torch
from torch import nn

MODELS = ("cnn", "vit")


def _image(device: torch.device) -> torch.Tensor:
    return torch.randn(2, 3, 32, 32).to(device)


def cnn() -> nn.Module:
    # BatchNorm, squeeze-excitation and hard-swish blocks; about 0.6 M parameters
    model: nn.Module = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=4)
    return model


cnn.example_input = _image  # type: ignore[attr-defined]


def vit() -> nn.Module:
    model: nn.Module = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=4,
    )
    return model


vit.example_input = _image  # type: ignore[attr-defined]
