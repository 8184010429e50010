"""Flux.1 (dev, schnell, Kontext) as Edicho meets it.

Tokens in joint attention are `[text | image | context images (Kontext)]`; image tokens are 2x2
patches of the 4-D latent. RoPE is applied inside the attention function, right before the
host's attention backend: Corr-Attention is `joint_attention`'s gather there, on the blocks the
host names `("double", i)` and `("single", i)`.
"""
from comfy.ldm.flux.model import Flux

from . import joint_attention
from .joint_attention import diffusion_model


def matches(model):
    """Flux.1 and its Kontext use: the host's Flux class with 2x2 patches and 3 RoPE axes (not Flux.2)."""
    dm = diffusion_model(model)
    return isinstance(dm, Flux) and dm.params.patch_size == 2 and len(dm.params.axes_dim) == 3


def default_layers(model):
    """The single-stream blocks: the second half of the network, like the UNet decoder where the paper
    patches; the double blocks first align image and text. Not tuned on real weights (none here)."""
    return "single"


def attention_layers(model):
    """Every joint attention as (block_type, index) keys, in execution order."""
    dm = diffusion_model(model)
    return [("double", i) for i in range(len(dm.double_blocks))] + [("single", i) for i in range(len(dm.single_blocks))]


def patch_attention(patched, corr, keys, gate, strength, mode, node):
    joint_attention.patch_attention(patched, corr, keys, gate, strength, mode, node)
