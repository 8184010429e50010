"""Corr-Attention on joint-attention DiTs (Flux.1, FLUX.2, Qwen-Image, SD3/SD3.5), shared by their family modules.

Their attention runs over one sequence `[text | image | reference images (Kontext, FLUX.2, Qwen edit)]`
whose image tokens are the latent's 2x2 patches (single cells on FLUX.2), row-major. Every such host calls its attention
backend through `optimized_attention_override` (both hosts): Corr-Attention lives there, as a
gather of the reference's attention output (`kernels.corr_attention.gather_image_tokens`). An
APPLY_MODEL wrapper (run by every model on both hosts) checks the batch, updates the step gate
and tells it, per model call, where the image tokens are. Text and reference-image tokens keep
their own output.
"""
from typing import NamedTuple

import comfy.patcher_extension

from ...kernels.corr_attention import gather_image_tokens, share_image_tokens

WRAPPER_KEY = "edicho_corr_attention"
LAYOUT_KEY = "edicho_image_tokens"


class ImageTokens(NamedTuple):
    """Where the image tokens are in a model call's joint sequence: `start` (the text length) and the token grid."""
    start: int
    grid: tuple


def diffusion_model(model):
    """The DiT inside a MODEL (ModelPatcher), or None."""
    return getattr(model.model, "diffusion_model", None)


def patch_grid(latent_grid, patch=2):
    """The host's patch grid of a latent `(h, w)`: `patch` x `patch` patches, padded up."""
    return (latent_grid[0] + patch - 1) // patch, (latent_grid[1] + patch - 1) // patch


def second_half(name, count):
    """'name.k-n' selecting the second half of `count` blocks: the counterpart of the UNet decoder that the paper patches."""
    return f"{name}.{count // 2}-{count - 1}" if count > 1 else name


class JointLayout:
    """APPLY_MODEL wrapper: updates the step gate and records the image tokens' place (the batch and latent
    are checked by `patch_support.SamplingCheck`, on every call)."""

    def __init__(self, gate, extra_text_tokens=0, patch=2):
        self.gate = gate
        # Tokens the model puts before the text (SD3's registers).
        self.extra_text_tokens = extra_text_tokens
        self.patch = patch

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        self.gate.update(transformer_options["sigmas"], transformer_options.get("sample_sigmas"))
        if self.gate.is_active:
            start = self.extra_text_tokens + (c_crossattn.shape[1] if c_crossattn is not None else 0)
            transformer_options = {**transformer_options, LAYOUT_KEY: ImageTokens(start, patch_grid(x.shape[-2:], self.patch))}
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)


class JointCorrAttention:
    """optimized_attention_override: on the selected blocks, each target's matched image tokens take the
    reference's attention output at the matched token (warp), or attend to the reference's K/V (share).

    Blocks are `(transformer_options["block_type"], ["block_index"])`. A block's image-only attention
    (SD3.5's attn2: the sequence is just the image tokens) is patched like its joint attention.
    Wraps the override that was set before (another pack's), which computes every attention call.
    """

    def __init__(self, corr, gate, keys, strength, mode, inner=None):
        self.corr = corr
        self.gate = gate
        self.keys = frozenset(keys)
        self.strength = strength
        self.mode = mode
        self.inner = inner

    def __deepcopy__(self, memo):
        return self

    def attend(self, func, *args, **kwargs):
        return self.inner(func, *args, **kwargs) if self.inner is not None else func(*args, **kwargs)

    def __call__(self, func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        layout = options.get(LAYOUT_KEY)
        if (layout is None or self.strength == 0.0 or not self.gate.is_active
                or (options.get("block_type"), options.get("block_index")) not in self.keys):
            return self.attend(func, *args, **kwargs)
        out = self.attend(func, *args, **kwargs)
        # Output [rows, tokens, channels] unless the caller asked for [rows, heads, tokens, dim].
        token_dim = 2 if kwargs.get("skip_output_reshape") else 1
        count = layout.grid[0] * layout.grid[1]
        start = 0 if out.shape[token_dim] == count else layout.start
        return corr_attention_output(self, func, args, kwargs, out, layout.grid, start, token_dim)


def corr_attention_output(override, func, args, kwargs, out, grid, start, token_dim):
    """One attention call's output `out` with the targets' image tokens (`grid`, from `start` on `token_dim`) taken
    from the reference's (warp) or recomputed on its K/V (share), blended by `override.strength`."""
    count = grid[0] * grid[1]
    chunks = len(kwargs["transformer_options"]["cond_or_uncond"])
    row_source, query_source = override.corr.attention_sources(out.device, grid, chunks)
    if override.mode == "share":
        q, k, v = args[:3]
        shared = override.attend(func, q, k.index_select(0, row_source), v.index_select(0, row_source), *args[3:],
                                 **kwargs)
        patched = share_image_tokens(out, shared, row_source, start, count, token_dim)
    else:
        patched = gather_image_tokens(out, query_source, start, count, token_dim)
    if override.strength < 1.0:
        patched = out.lerp(patched, override.strength)
    return patched


def patch_attention(patched, corr, keys, gate, strength, mode, node, extra_text_tokens=0, patch=2):
    """Set Corr-Attention on `patched` (a clone): the layout wrapper and the attention override.

    `extra_text_tokens` come before the text in the sequence (SD3's registers); an image token is
    `patch` x `patch` latent cells (1 on FLUX.2).
    """
    options = patched.model_options.setdefault("transformer_options", {})
    inner = options.get("optimized_attention_override")
    options["optimized_attention_override"] = JointCorrAttention(corr, gate, keys, strength, mode, inner)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY,
                                 JointLayout(gate, extra_text_tokens, patch))
