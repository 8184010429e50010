"""Flux.1 (dev, schnell, Kontext) as Edicho meets it.

Tokens in joint attention are `[text | image | context images (Kontext)]`; image tokens are
2x2 patches of the latent in row-major order, so the token grid is the latent's halved (rounded
up, as the host pads). RoPE is applied inside the attention function, right before the host's
attention backend, which consults `transformer_options["optimized_attention_override"]` on both
hosts: Corr-Attention lives there, as a gather of the reference's attention output (see
`kernels.corr_attention.gather_image_tokens`). A DIFFUSION_MODEL wrapper tells it, per model
call, where the image tokens are and whether the step is in range.
"""
import re

import comfy.patcher_extension
from comfy.ldm.flux.model import Flux

from ..kernels.corr_attention import gather_image_tokens, share_image_tokens
from .patch_support import check_batch_rows, check_grid

# The single-stream blocks: the second half of the network, like the UNet decoder where the paper
# patches; the double blocks first align image and text. Not tuned on real weights (none here).
DEFAULT_LAYERS = "single"
WRAPPER_KEY = "edicho_corr_attention"
# Per model call: (first image token, token grid) of the joint sequence.
LAYOUT_KEY = "edicho_image_tokens"


def diffusion_model(model):
    return getattr(model.model, "diffusion_model", None)


def matches(model):
    """Flux.1 and its Kontext use: the host's Flux class with 2x2 patches and 3 RoPE axes (not Flux.2)."""
    dm = diffusion_model(model)
    return isinstance(dm, Flux) and dm.params.patch_size == 2 and len(dm.params.axes_dim) == 3


def attention_layers(model):
    """Every joint attention as (block_type, index) keys, in execution order."""
    dm = diffusion_model(model)
    return [("double", i) for i in range(len(dm.double_blocks))] + [("single", i) for i in range(len(dm.single_blocks))]


def token_grid(latent_grid):
    """The host's patch grid of a latent `(h, w)`: 2x2 patches, padded up."""
    return (latent_grid[0] + 1) // 2, (latent_grid[1] + 1) // 2


class FluxLayout:
    """DIFFUSION_MODEL wrapper: checks the batch, updates the step gate and records where the image tokens are."""

    def __init__(self, corr, gate, node):
        self.corr = corr
        self.gate = gate
        self.node = node

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, x, timestep, context, *args, **kwargs):
        options = kwargs.get("transformer_options")
        if options is None:
            options = args[4]
        self.gate.update(options["sigmas"], options.get("sample_sigmas"))
        if self.gate.is_active:
            check_batch_rows(self.node, self.corr.corr, x.shape[0], options)
            check_grid(self.node, self.corr.corr, x.shape[-2:])
            options[LAYOUT_KEY] = (context.shape[1], token_grid(x.shape[-2:]))
        return executor(x, timestep, context, *args, **kwargs)


class FluxCorrAttention:
    """optimized_attention_override: on the selected blocks, each target's matched image tokens take the
    reference's attention output at the matched token (warp), or attend to the reference's K/V (share).

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
        start, grid = layout
        q, k, v = args[:3]
        out = self.attend(func, *args, **kwargs)
        # Output [rows, tokens, channels] unless the caller asked for [rows, heads, tokens, dim].
        token_dim = 2 if kwargs.get("skip_output_reshape") else 1
        chunks = len(options["cond_or_uncond"])
        row_source, query_source = self.corr.attention_sources(out.device, grid, chunks)
        if self.mode == "share":
            shared = self.attend(func, q, k.index_select(0, row_source), v.index_select(0, row_source), *args[3:], **kwargs)
            patched = share_image_tokens(out, shared, row_source, start, grid[0] * grid[1], token_dim)
        else:
            patched = gather_image_tokens(out, query_source, start, grid[0] * grid[1], token_dim)
        if self.strength < 1.0:
            patched = out.lerp(patched, self.strength)
        return patched


def patch_attention(patched, corr, keys, gate, strength, mode, node):
    """Set Corr-Attention on `patched` (a clone): the layout wrapper and the attention override."""
    options = patched.model_options.setdefault("transformer_options", {})
    inner = options.get("optimized_attention_override")
    options["optimized_attention_override"] = FluxCorrAttention(corr, gate, keys, strength, mode, inner)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                                 FluxLayout(corr, gate, node))
