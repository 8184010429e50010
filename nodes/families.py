"""Which model family a MODEL is, and a clear refusal for the ones Edicho does not support.

Each family is one module (`family_unet`, `family_flux`, ...) that knows its patch points, token
layout and layers: `matches(model)`, `attention_layers(model)`, `default_layers(model)` (the
selection `auto` means), `patch_attention(patched, corr, keys, gate, strength, mode, node)`.
"""
from . import family_flux, family_qwen_image, family_sd3, family_unet

FAMILIES = (family_unet, family_flux, family_qwen_image, family_sd3)
SUPPORTED = ("SD1.x, SD2.x, SDXL (UNet), Flux.1 (dev, schnell, Kontext), Qwen-Image (and Edit 2509, 2511) "
             "and SD3/SD3.5")


def model_family_name(model):
    """The host's name for the model's family (its model config class)."""
    config = getattr(model.model, "model_config", None)
    return type(config).__name__ if config is not None else type(getattr(model.model, "diffusion_model", model.model)).__name__


def family_of(model, node):
    """The family module of `model`, or a ValueError naming the node and the family."""
    for family in FAMILIES:
        if family.matches(model):
            return family
    raise ValueError(f"{node}: the model is {model_family_name(model)}, which Edicho does not support yet. "
                     f"Supported: {SUPPORTED}. Load one of those models.")
