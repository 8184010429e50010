"""Qwen-Image and Qwen-Image-Edit (2509, 2511) as Edicho meets them.

Joint attention runs over `[text | image | edit references]`: the host's TextEncodeQwenImageEdit
and ReferenceLatent append each reference image's tokens after the image's own. Image tokens are
2x2 patches of a 5-D latent `[B, 16, 1, h, w]` (one frame), row-major. Every block is a joint
block the host names `("double", i)`, with `block_index` set, and calls its attention through
`optimized_attention_override`: Corr-Attention is `joint_attention`'s gather there. Reference
tokens, including 2511's timestep-zero ones, keep their own output.
"""
from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel

from . import joint_attention
from .joint_attention import diffusion_model


def matches(model):
    """The host's own Qwen-Image transformer (not models built on it with another token layout)."""
    dm = diffusion_model(model)
    return type(dm) is QwenImageTransformer2DModel and dm.patch_size == 2


def attention_layers(model):
    """Every joint attention as (block_type, index) keys, in execution order."""
    return [("double", i) for i in range(len(diffusion_model(model).transformer_blocks))]


def default_layers(model):
    """The second half of the blocks: Qwen-Image has no encoder/decoder split, and the paper patches the
    UNet's decoder, its second half. Not tuned on real weights (none here)."""
    return joint_attention.second_half("double", len(diffusion_model(model).transformer_blocks))


def check_latent(x, node):
    """One frame: Edicho edits images, and the correspondence covers one frame's tokens."""
    if x.ndim != 5 or x.shape[2] != 1:
        raise ValueError(f"{node}: Qwen-Image is sampling a latent of shape {list(x.shape)}, but Edicho edits single "
                         f"images: a latent of one frame per photo [B, 16, 1, h, w] (EmptySD3LatentImage, or the "
                         f"photos through Edicho Encode Photos).")


def patch_attention(patched, corr, keys, gate, strength, mode, node):
    joint_attention.patch_attention(patched, corr, keys, gate, strength, mode, node)
