"""Qwen-Image 2.1 (edit, turbo edit; ComfyUI >= 0.37) as Edicho meets it, on the host's own class.

One sequence per row, `[text | ref 1 | text | ... | text | TARGET]`: each edit reference (TextEncodeQwenImage21's,
ReferenceLatent's) is a segment, the sampled latent `[B, 64, H/16, W/16]` comes last, one token per cell, row-major.
32 single-stream blocks, named `("single", i)`. Attention is block-causal and issued once per segment: only the
target's call has queries on its H x W tokens and keys and values over the whole sequence. The host's prefix
cache (on by default) computes text and references once per sampling run; later steps run only that call.
Corr-Attention is the gather of the reference's attention output on that call, through
`optimized_attention_override`, which leaves the cache on. Text and reference segments, which the cache
freezes, are never touched.
"""
import sys
from typing import NamedTuple

import comfy.patcher_extension

from .joint_attention import JointCorrAttention, corr_attention_output, diffusion_model, second_half
from .layer_selection import describe_layers

# Upstream's class; hosts before 0.37 have no such module, so it is looked up among the loaded ones, never imported.
HOST_MODULE, HOST_CLASS = "comfy.ldm.qwen_image21.model", "QwenImage21Transformer2DModel"
# Qwen-Image 2.1's VAE: 64 channels at 1/16, and the latent is the token grid.
LATENT_RATIO = 16
WRAPPER_KEY = "edicho_corr_attention"
LAYOUT_KEY = "edicho_qwen21_target"


def matches(model):
    """The host's Qwen-Image 2.1 transformer (the module is loaded wherever such a model exists)."""
    host_class = getattr(sys.modules.get(HOST_MODULE), HOST_CLASS, None)
    return host_class is not None and isinstance(diffusion_model(model), host_class)


def attention_layers(model):
    """Every block's attention as (block_type, index) keys, in execution order."""
    return [("single", i) for i in range(len(diffusion_model(model).transformer_blocks))]


def default_layers(model):
    """The second half of the blocks: every block is the same single-stream kind, with no encoder/decoder split,
    and the paper patches the UNet's decoder, its second half. Not tuned on real weights (none here)."""
    return second_half("single", len(diffusion_model(model).transformer_blocks))


def check_latent(x, node):
    """An image latent `[B, 64, h, w]`: the token grid the correspondence covers."""
    if x.ndim != 4:
        raise ValueError(f"{node}: Qwen-Image 2.1 is sampling a latent of shape {list(x.shape)}, but it edits "
                         f"images from a 4-D latent [B, 64, h, w]: the photos through Edicho Encode Photos (or "
                         f"VAEEncode) with Qwen-Image 2.1's VAE.")


class TargetTokens(NamedTuple):
    """One model call's target: its token grid `(H, W)`, the whole sequence's length, and the selected blocks whose
    target attention reached Corr-Attention (filled during the call)."""
    grid: tuple
    sequence: int
    seen: set


class TargetLayout:
    """APPLY_MODEL wrapper: updates the step gate, tells the override where the target is, and after the call
    checks that every selected block's target attention reached it."""

    def __init__(self, gate, keys, node):
        self.gate = gate
        self.keys = list(keys)
        self.node = node

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        self.gate.update(transformer_options["sigmas"], transformer_options.get("sample_sigmas"))
        if not self.gate.is_active:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        # A second Edicho patch on the same model shares the first one's record of this call.
        target = transformer_options.get(LAYOUT_KEY)
        if target is None:
            grid = tuple(x.shape[-2:])
            references = sum(r.shape[-2] * r.shape[-1] for r in kwargs.get("ref_latents") or [])
            text = c_crossattn.shape[1] if c_crossattn is not None else 0
            target = TargetTokens(grid, text + references + grid[0] * grid[1], set())
            transformer_options = {**transformer_options, LAYOUT_KEY: target}
        out = executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        missed = [key for key in self.keys if key not in target.seen]
        if missed:
            raise RuntimeError(
                f"{self.node}: Corr-Attention did not reach the target attention of {describe_layers(missed)} in this "
                f"step: an attention override set after it answers those calls itself (ComfyUI's Model Sparse "
                f"Attention, BlockSparseAttention, does so on the calls it makes sparse). Put those blocks in its "
                f"dense_blocks, or leave it out of this graph.")
        return out


class TargetCorrAttention(JointCorrAttention):
    """optimized_attention_override: on the target call of each selected block (queries on the target's tokens,
    keys over the whole sequence), each target's matched tokens take the reference's attention output at the match
    (warp), or attend to the reference's K/V (share). Every other call is left as it is.

    Wraps the override that was set before (another pack's), which computes every attention call.
    """

    def __init__(self, corr, gate, keys, strength, mode, node, inner=None):
        super().__init__(corr, gate, keys, strength, mode, inner)
        self.node = node

    def __call__(self, func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        target = options.get(LAYOUT_KEY)
        key = (options.get("block_type"), options.get("block_index"))
        q, k = args[:2]
        # Inputs [rows, tokens, channels] unless the caller passes [rows, heads, tokens, dim]; the output likewise.
        token_dim = 2 if kwargs.get("skip_reshape") else 1
        if (target is None or not self.gate.is_active or key not in self.keys
                or k.shape[token_dim] != target.sequence):
            return self.attend(func, *args, **kwargs)
        count = target.grid[0] * target.grid[1]
        if q.shape[token_dim] != count:
            raise RuntimeError(f"{self.node}: Qwen-Image 2.1's attention over all {target.sequence} tokens has "
                               f"{q.shape[token_dim]} queries, not the target's {count}: this ComfyUI lays the "
                               f"sequence out differently from the version Edicho was written for. Sample without "
                               f"Edicho's patches on this model, and report your ComfyUI version.")
        target.seen.add(key)
        out = self.attend(func, *args, **kwargs)
        if self.strength == 0.0:
            return out
        out_dim = 2 if kwargs.get("skip_output_reshape") else 1
        return corr_attention_output(self, func, args, kwargs, out, target.grid, 0, out_dim)


def patch_attention(patched, corr, keys, gate, strength, mode, node):
    """Set Corr-Attention on `patched` (a clone): the target layout wrapper and the attention override."""
    options = patched.model_options.setdefault("transformer_options", {})
    options["optimized_attention_override"] = TargetCorrAttention(corr, gate, keys, strength, mode, node,
                                                                  options.get("optimized_attention_override"))
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY,
                                 TargetLayout(gate, keys, node))
