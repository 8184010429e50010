"""FLUX.2 (dev, Klein 4B / 9B base and distilled, Klein 9B KV) as Edicho meets it.

The host's Flux class with 1x1 patches and 4 RoPE axes (time, y, x, text position): tokens in
joint attention are `[text (padded to 512) | image | reference 1 | reference 2 ...]`, one image
token per cell of the latent `[B, 128, H/16, W/16]`, row-major. RoPE is applied inside the
attention function, so Corr-Attention is `joint_attention`'s gather there, on the blocks the
host names `("double", i)` and `("single", i)`. With the host's FluxKVCache the reference tokens
are computed once: later steps' queries cover `[text | image]` while keys and values still hold
the cached reference tokens; the gather reads the output, which has the queries' length.
"""
from comfy.ldm.flux.model import Flux

from . import joint_attention
from .joint_attention import diffusion_model

# The FLUX.2 VAE: a 2x2 shuffle of an 8x VAE's 32 channels, 128 channels at 1/16.
LATENT_RATIO = 16


def matches(model):
    """The host's Flux class in its FLUX.2 shape: single-cell patches and 4 RoPE axes."""
    dm = diffusion_model(model)
    return isinstance(dm, Flux) and dm.params.patch_size == 1 and len(dm.params.axes_dim) == 4


def default_layers(model):
    """The single-stream blocks, as on Flux.1 (same double-then-single layout, the second part of the network,
    like the UNet decoder where the paper patches). Not tuned on real weights (none here)."""
    return "single"


def attention_layers(model):
    """Every joint attention as (block_type, index) keys, in execution order."""
    dm = diffusion_model(model)
    return [("double", i) for i in range(len(dm.double_blocks))] + [("single", i) for i in range(len(dm.single_blocks))]


def patch_attention(patched, corr, keys, gate, strength, mode, node):
    joint_attention.patch_attention(patched, corr, keys, gate, strength, mode, node, patch=1)
