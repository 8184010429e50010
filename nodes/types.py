"""Socket types the pack adds to the graph, and the feature record passed between its nodes."""
from dataclasses import dataclass

import torch
from comfy_api.latest import io

Features = io.Custom("EDICHO_FEATURES")
CorrespondenceType = io.Custom("EDICHO_CORRESPONDENCE")


@dataclass(frozen=True)
class DiftFeatures:
    """Diffusion features of an image group: `features` [B, C, h, w] from one decoder level."""
    features: torch.Tensor
    image_size: tuple  # (H, W) pixels of the images they came from
    latent_grid: tuple  # (h, w) of the model's latent for those images: the grid matching runs on
    up_level: int
    timestep: int
