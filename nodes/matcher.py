"""EdichoMatcher: features -> EDICHO_CORRESPONDENCE (reference -> every target)."""
import torch
from comfy_api.latest import io

import comfy.model_management

from ..kernels.features import prepare_features
from ..kernels.matching import match_features
from .types import CorrespondenceType, Features

NODE = "EdichoMatcher"


def masks_for(masks, batch, grid):
    """MASK [N, H, W] (N = 1 or batch) -> bool [batch, h, w] on the matching grid, or a clear error."""
    if masks.ndim == 2:
        masks = masks[None]
    if masks.shape[0] not in (1, batch):
        raise ValueError(f"{NODE}: got {masks.shape[0]} masks for {batch} images. Give one mask per image, "
                         f"or a single mask for all.")
    masks = torch.nn.functional.interpolate(masks[:, None].float(), size=grid, mode="bilinear", align_corners=False)
    return (masks[:, 0] > 0.5).expand(batch, *grid)


def build_correspondence(features, reference, mutual, min_similarity, chunk_size, masks=None):
    """Match DIFT features at the latent grid."""
    batch = features.features.shape[0]
    if not 0 <= reference < batch:
        raise ValueError(f"{NODE}: reference index {reference} is out of range for a batch of {batch} images "
                         f"(use 0..{batch - 1}).")
    grid = tuple(features.latent_grid)
    device = comfy.model_management.get_torch_device()
    prepared = prepare_features(features.features.to(device), grid)
    mask_grid = masks_for(masks, batch, grid).to(device) if masks is not None else None
    corr = match_features(prepared, reference, mutual=mutual, min_similarity=min_similarity, masks=mask_grid,
                          chunk_size=chunk_size, image_size=tuple(features.image_size))
    return corr.to(comfy.model_management.intermediate_device())


class EdichoMatcher(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE,
            display_name="Edicho Matcher",
            category="edicho/correspondence",
            description="Explicit correspondence from the reference image to every other image, by cosine "
                        "nearest neighbour of DIFT features at the latent grid. Computed once, reused at every step and layer.",
            inputs=[
                Features.Input("features", tooltip="From Edicho Feature Extractor."),
                io.Int.Input("reference", default=0, min=0, max=63,
                             tooltip="Batch index of the reference image: every other image is edited to agree with it."),
                io.Boolean.Input("mutual", default=True,
                                 tooltip="Keep only mutual nearest neighbours (target -> reference -> same target). Removes matches to things only one image has."),
                io.Float.Input("min_similarity", default=0.0, min=-1.0, max=1.0, step=0.01,
                               tooltip="Matches with a lower cosine similarity are dropped (the target keeps its own values there)."),
                io.Int.Input("chunk_size", default=512, min=1, max=1 << 20,
                             tooltip="Target positions matched at a time: peak memory grows with it. The default is as fast as all-at-once."),
                io.Mask.Input("masks", optional=True,
                              tooltip="Optional: where matching is allowed (1) in each image, one mask per image or one for all, e.g. the subject."),
            ],
            outputs=[CorrespondenceType.Output(display_name="correspondence")],
        )

    @classmethod
    def execute(cls, features, reference, mutual, min_similarity, chunk_size, masks=None) -> io.NodeOutput:
        return io.NodeOutput(build_correspondence(features, reference, mutual, min_similarity, chunk_size, masks))
