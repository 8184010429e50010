"""SD3 and SD3.5 (MMDiT) as Edicho meets them.

Joint attention runs over `[registers | text | image]`; image tokens are 2x2 patches of the 4-D
latent with absolute positions (no RoPE), row-major. SD3.5 Medium's first blocks also run an
image-only self-attention (attn2), patched with its block. MMDiT does not tell its attention
which block runs, so each selected block gets a `("double_block", i)` dit replace that sets
`block_type`/`block_index` for `joint_attention`'s override and then runs the replace another
pack set there, or the block.
"""
import comfy.model_base

from . import joint_attention
from .joint_attention import diffusion_model


def matches(model):
    return isinstance(model.model, comfy.model_base.SD3) and tuple(diffusion_model(model).x_embedder.patch_size) == (2, 2)


def attention_layers(model):
    """Every joint block as (block_type, index) keys, in execution order."""
    return [("double", i) for i in range(len(diffusion_model(model).joint_blocks))]


def default_layers(model):
    """The second half of the blocks: MMDiT has no encoder/decoder split, and the paper patches the UNet's
    decoder, its second half. Not tuned on real weights (none here)."""
    return joint_attention.second_half("double", len(diffusion_model(model).joint_blocks))


class BlockIndex:
    """dit replace on one joint block: names the block in transformer_options, then runs the block
    (or the replace another pack set on it, which receives the same arguments)."""

    def __init__(self, index, inner=None):
        self.index = index
        self.inner = inner

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args, extra):
        args = {**args, "transformer_options": {**args["transformer_options"], "block_type": "double",
                                                "block_index": self.index}}
        return self.inner(args, extra) if self.inner is not None else extra["original_block"](args)


def patch_attention(patched, corr, keys, gate, strength, mode, node):
    replaces = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for _, index in keys:
        patched.set_model_patch_replace(BlockIndex(index, replaces.get(("double_block", index))), "dit", "double_block", index)
    joint_attention.patch_attention(patched, corr, keys, gate, strength, mode, node,
                                    extra_text_tokens=diffusion_model(patched).register_length)
