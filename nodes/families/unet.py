"""The UNet families (SD1.x, SD2.x, SDXL) as Edicho meets them: is a model one, where its decoder
levels start, which self-attention layers it has (read from the loaded module, never assumed), and
Corr-Attention as attn1 replace patches on them. Tokens of a layer are the activations' grid,
row-major; rows are chunks of the batch (HOST.md)."""
import torch

from comfy.ldm.modules.attention import SpatialTransformer, optimized_attention
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from ...kernels.corr_attention import gather_attention_inputs, packed_corr_attention
from .patch_support import model_family_name


def matches(model):
    return isinstance(getattr(model.model, "diffusion_model", None), UNetModel)


def default_layers(model):
    """The paper's choice: every decoder self-attention layer."""
    return "output"


def unet_of(model, node):
    """The UNetModel inside a MODEL (ModelPatcher), or a clear error: DIFT features come from a UNet."""
    if not matches(model):
        raise ValueError(
            f"{node}: the model is {model_family_name(model)}, and DIFT features come from a UNet. Load an SD1.5, "
            f"SD2.1 or SDXL checkpoint for this node: its correspondence works for a Flux, Qwen-Image or SD3 model in the same graph.")
    return model.model.diffusion_model


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


def attention_layers(model):
    """All self-attention layers of a UNet MODEL as (block_name, block_id, depth_index) keys."""
    return self_attention_layers(model.model.diffusion_model)


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


def host_attention(q, k, v, extra_options):
    """The host's own self-attention, as CrossAttention.forward calls it."""
    return optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options["attn_precision"],
                               transformer_options=extra_options)


class CorrAttentionPatch:
    """attn1 replace for one layer: targets attend to the reference's K/V with warped queries.

    Wraps whatever replace was already set on that layer (`inner`), so another pack's attention
    still runs, on Edicho's inputs. Clones share one instance: it holds no per-clone state.
    """

    def __init__(self, corr, gate, strength, mode, node, inner=None):
        self.corr = corr
        self.node = node
        self.gate = gate
        self.strength = strength
        self.mode = mode
        self.inner = inner or host_attention
        # The packed path (attention only for the reference's and the unmatched target queries, the
        # matched ones gathered from the reference's output) is the same math only for warped queries at
        # full strength with the host's own attention: share keeps each target's queries, a blend needs
        # the unpatched output anyway, and a wrapped replace must see every row's inputs.
        self.packed = mode == "warp" and strength == 1.0 and inner is None

    def __deepcopy__(self, memo):
        return self

    def to(self, device_or_dtype):
        return self

    def __call__(self, q, k, v, extra_options):
        if self.strength == 0.0 or not self.gate.update(extra_options["sigmas"]).is_active:
            return self.inner(q, k, v, extra_options)
        return self.corr_attention(q, k, v, extra_options)

    def corr_attention(self, q, k, v, extra_options):
        """Corr-Attention on one call inside the active range: q, k, v `[chunks * B, N, C]` -> `[chunks * B, N, C]`."""
        h, w = extra_options["activations_shape"][-2:]
        if q.shape[1] != h * w:
            raise ValueError(f"{self.node}: this layer has {q.shape[1]} tokens for a {w}x{h} grid: another patch "
                             f"(token merging such as ToMe?) changed them. Remove it or apply it after Edicho's layers.")
        chunks = len(extra_options["cond_or_uncond"])
        if self.packed:
            plan = self.corr.packed_attention_plan(q.device, (h, w), chunks)
            return packed_corr_attention(q, k, v, plan, lambda q2, k2, v2: host_attention(q2, k2, v2, extra_options))
        sources = self.corr.attention_sources(q.device, (h, w), chunks)
        q2, k2, v2 = gather_attention_inputs(q, k, v, sources, mode=self.mode)
        out = self.inner(q2, k2, v2, extra_options)
        if self.strength < 1.0:
            out = torch.lerp(self.inner(q, k, v, extra_options), out, self.strength)
        return out


def patch_attention(patched, corr, keys, gate, strength, mode, node):
    """Set Corr-Attention on `patched` (a clone): the step gate as emb patch, one attn1 replace per layer."""
    patched.set_model_emb_patch(gate)
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})
    for key in keys:
        # The host looks up (block, id, depth) first, then (block, id) for every depth of that block.
        inner = existing.get(key) or existing.get(key[:2])
        patched.set_model_attn1_replace(CorrAttentionPatch(corr, gate, strength, mode, node, inner=inner),
                                        key[0], key[1], key[2])
