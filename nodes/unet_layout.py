"""What the pack needs to know about a host UNet: is it one, where its decoder levels start,
and which self-attention layers it has. Read from the loaded module, never assumed."""
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel


def unet_of(model, node):
    """The UNetModel inside a MODEL (ModelPatcher), or a clear error for DiT/MMDiT families."""
    unet = getattr(model.model, "diffusion_model", None)
    if not isinstance(unet, UNetModel):
        family = type(model.model.model_config).__name__ if hasattr(model.model, "model_config") else type(unet).__name__
        raise ValueError(
            f"{node}: the model is {family}, which has no UNet self-attention layout (a DiT/MMDiT such as "
            f"Flux or SD3). Edicho here supports UNet families (SD1.x, SD2.x, SDXL): load one of those checkpoints.")
    return unet


def output_block_of_up_level(unet, up_level):
    """Index of the output block whose input is the output of decoder level `up_level` (DIFT's up_ft_index)."""
    per_level = [n + 1 for n in reversed(unet.num_res_blocks)]
    if not 0 <= up_level < len(per_level) - 1:
        raise ValueError(f"decoder level {up_level} is out of range: this UNet's upsampling levels are "
                         f"0..{len(per_level) - 2}")
    return sum(per_level[: up_level + 1])


def default_up_level(unet):
    """DIFT's feature resolution on any UNet: the decoder level whose output is 1/16 of the image side.

    The deepest level runs at latent / 2^(levels-1) and each decoder level doubles it, so level k
    outputs latent / 2^(levels-2-k): 1 on SD1.x/SD2.x (4 levels, DIFT's up_ft_index), 0 on SDXL (3).
    """
    return max(0, len(unet.num_res_blocks) - 3)


def self_attention_layers(unet):
    """All self-attention layers as (block_name, block_id, depth_index) keys, in execution order."""
    keys = []
    for name, blocks in (("input", unet.input_blocks), ("middle", [unet.middle_block] if unet.middle_block is not None else []),
                         ("output", unet.output_blocks)):
        for block_id, block in enumerate(blocks):
            for layer in block:
                if isinstance(layer, SpatialTransformer):
                    keys.extend((name, block_id, depth) for depth in range(len(layer.transformer_blocks)))
    return keys
