"""The TAE's optional training losses: a VGG16 perceptual distance (weights from a local
file, nothing downloaded) and a 2.5D patch discriminator for a hinge GAN term."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from moviegen.models.tae import Conv25d

_VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M"]
_VGG16_TAPS = (3, 8, 15, 22)  # relu1_2, relu2_2, relu3_3, relu4_3 in torchvision numbering


class VGG16Features(nn.Module):
    """torchvision-compatible VGG16 ``features`` (up to relu4_3) loaded from a local file."""

    def __init__(self):
        super().__init__()
        layers, ch = [], 3
        for v in _VGG16_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(ch, v, 3, padding=1), nn.ReLU()]
                ch = v
        self.features = nn.Sequential(*layers[:_VGG16_TAPS[-1] + 1])
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_file(cls, path: str) -> "VGG16Features":
        from safetensors.torch import load_file

        net = cls()
        sd = {k: v for k, v in load_file(path).items()
              if k.startswith("features.") and int(k.split(".")[1]) <= _VGG16_TAPS[-1]}
        net.load_state_dict(sd, strict=True)
        return net.eval().requires_grad_(False)

    def distance(self, x_NCHW: torch.Tensor, y_NCHW: torch.Tensor) -> torch.Tensor:
        """Mean over taps of the MSE between channel-unit-normalised features (LPIPS-like,
        without learned channel weights). Inputs in [-1, 1]."""
        h = torch.cat([x_NCHW, y_NCHW]).add(1).div(2).sub(self.mean).div(self.std)
        loss = h.new_zeros(())
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _VGG16_TAPS:
                f = h / (h.norm(dim=1, keepdim=True) + 1e-10)
                fx, fy = f.chunk(2)
                loss = loss + (fx - fy).pow(2).sum(dim=1).mean()
        return loss / len(_VGG16_TAPS)


class PatchDiscriminator(nn.Module):
    """A small 2.5D patch discriminator (stride-2 spatial convs), trained from scratch."""

    def __init__(self, channels: int = 32, n_layers: int = 3):
        super().__init__()
        convs, ch = [], 3
        for i in range(n_layers):
            convs.append(Conv25d(ch, channels * 2 ** i, spatial_stride=2))
            ch = channels * 2 ** i
        self.convs = nn.ModuleList(convs)
        self.head = nn.Conv3d(ch, 1, 1)

    def forward(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        h = video_BCTHW
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
        return self.head(h)  # patch logits

    def init_weights(self) -> None:
        for m in self.modules():
            if hasattr(m, "reset_parameters") and m is not self:
                m.reset_parameters()
        for conv in self.convs:
            conv.temporal.init_weights()
