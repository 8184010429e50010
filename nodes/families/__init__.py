"""The model-family layer: which family a MODEL is, its patch points, and a clear refusal for the
ones Edicho does not support. Node files import only this module.

Each family is one module (`unet`, `flux`, `flux2`, `qwen_image`, `qwen_image21`, `sd3`) that knows its patch points, token
layout and layers: `matches(model)`, `attention_layers(model)`, `default_layers(model)` (the
selection `auto` means), `patch_attention(patched, corr, keys, gate, strength, mode, node)`, and
optionally `LATENT_RATIO` (image pixels per latent cell, 8 if absent) and `check_latent(x, node)` (raises for a latent its token layout does not cover; run by
`add_sampling_check` on every model call). `joint_attention` is the layer the DiT families share; `layer_selection` and `patch_support` are
what the families and the patch nodes both use.
"""
from . import flux, flux2, qwen_image, qwen_image21, sd3, unet
from .layer_selection import AUTO, parse_layers
from .patch_support import CorrespondenceOnDevice, add_sampling_check, check_images, model_family_name
from .unet import default_up_level, output_block_of_up_level, unet_of

__all__ = ["AUTO", "CorrespondenceOnDevice", "FAMILIES", "SUPPORTED", "add_sampling_check", "check_images",
           "default_up_level", "family_of", "model_family_name", "output_block_of_up_level", "parse_layers", "unet_of"]

FAMILIES = (unet, flux, flux2, qwen_image, qwen_image21, sd3)
SUPPORTED = ("SD1.x, SD2.x, SDXL (UNet), Flux.1 (dev, schnell, Kontext), FLUX.2 (dev, Klein), "
             "Qwen-Image (and Edit 2509, 2511), Qwen-Image 2.1 (edit, turbo edit) and SD3/SD3.5")


def family_of(model, node):
    """The family module of `model`, or a ValueError naming the node and the family."""
    for family in FAMILIES:
        if family.matches(model):
            return family
    raise ValueError(f"{node}: the model is {model_family_name(model)}, which Edicho does not support yet. "
                     f"Supported: {SUPPORTED}. Load one of those models.")
