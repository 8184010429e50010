"""The hosts' own DiT classes (Flux.1, FLUX.2, Qwen-Image, SD3) at a reduced size, real code but not
loader-detected, and sampling through the host's sampler for each: what the DiT family tests
patch and sample. Text is 32 wide and `TEXT` tokens long; the latent `LATENT` (tokens 6x5), FLUX.2's
`LATENT_FLUX2` (tokens 6x5 too, one per cell); both are 96x80 px images."""
import inspect
import math

import torch

LATENT = (12, 10)  # 2x2 patches: tokens 6x5, not square
LATENT_FLUX2 = (6, 5)  # 1/16 of the image, one token per cell
TEXT = 6


def _patcher(model):
    """`model` with seeded random weights on every tensor of its state dict (SD3's pos_embed is a buffer)."""
    import comfy.model_patcher

    generator = torch.Generator().manual_seed(0)
    for _, tensor in model.diffusion_model.state_dict(keep_vars=True).items():
        tensor.data = (torch.randn(tensor.shape, generator=generator) / math.sqrt(tensor.shape[-1])
                       if tensor.ndim > 1 else torch.zeros(tensor.shape))
    return comfy.model_patcher.ModelPatcher(model, torch.device("cpu"), torch.device("cpu"))


def flux():
    """Flux.1 dev: 2 double + 2 single blocks, hidden 64."""
    import dataclasses

    import comfy.ldm.flux.model
    import comfy.supported_models

    config = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 32, "context_in_dim": 32,
              "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2,
              "axes_dim": [8, 12, 12], "theta": 10000, "qkv_bias": True, "guidance_embed": True, "patch_size": 2}
    if "txt_ids_dims" in {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}:
        config["txt_ids_dims"] = []
    return _patcher(comfy.supported_models.Flux(config).get_model({}))


def longcat():
    """LongCat-Image(-Edit): the host's Flux class with 3 RoPE axes, text positions on axes 1 and 2, no vector
    input, no guidance; 2 + 2 blocks, hidden 64. None on a host without `supported_models.LongCatImage` (0.3.75)."""
    import comfy.supported_models

    # Found among the host's detectable models: a host feature, absent on older hosts.
    longcat_image = next((m for m in comfy.supported_models.models if m.__name__ == "LongCatImage"), None)
    if longcat_image is None:
        return None
    config = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": None, "context_in_dim": 32,
              "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2,
              "axes_dim": [8, 12, 12], "theta": 10000, "qkv_bias": True, "guidance_embed": False, "patch_size": 2,
              "txt_ids_dims": [1, 2]}
    return _patcher(longcat_image(config).get_model({}))


def flux2(guidance=True):
    """FLUX.2 in its detected shape (patch 1, 4 RoPE axes, shared modulation, no biases, no vector input), at
    2 double + 2 single blocks of 2 heads of 32: dev with `guidance`, Klein without."""
    import dataclasses

    import comfy.ldm.flux.model
    import comfy.supported_models

    config = {"image_model": "flux2", "in_channels": 128, "out_channels": 128, "vec_in_dim": None, "context_in_dim": 32,
              "hidden_size": 64, "mlp_ratio": 3.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2,
              "axes_dim": [8, 8, 8, 8], "theta": 2000, "qkv_bias": False, "guidance_embed": guidance, "patch_size": 1,
              "global_modulation": True, "mlp_silu_act": True, "ops_bias": False, "default_ref_method": "index",
              "ref_index_scale": 10.0}
    if "txt_ids_dims" in {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}:
        config["txt_ids_dims"] = [3]
    return _patcher(comfy.supported_models.Flux2(config).get_model({}))


def qwen_has_reference_methods():
    """Whether this host's Qwen-Image takes a default reference method (Qwen-Image-Edit 2511's timestep-zero one)."""
    import comfy.ldm.qwen_image.model

    return "default_ref_method" in inspect.signature(comfy.ldm.qwen_image.model.QwenImageTransformer2DModel).parameters


def qwen_image(text_width=32, ref_method=None):
    """Qwen-Image: 2 blocks of 2 heads of 16; `ref_method` "index_timestep_zero" is Qwen-Image-Edit 2511's
    (see `qwen_has_reference_methods`)."""
    import comfy.supported_models

    config = {"image_model": "qwen_image", "in_channels": 64, "out_channels": 16, "num_layers": 2,
              "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": text_width,
              "axes_dims_rope": (4, 6, 6)}
    if ref_method is not None:
        config["default_ref_method"] = ref_method
    return _patcher(comfy.supported_models.QwenImage(config).get_model({}))


def sd3(register_length=0):
    """SD3.5 Medium's shape: depth 2 (hidden 128, 2 heads), RMS q/k norms, image-only attn2 in block 0."""
    import comfy.supported_models

    config = {"in_channels": 16, "out_channels": 16, "pos_embed_scaling_factor": None, "depth": 2, "patch_size": 2,
              "adm_in_channels": 32, "pos_embed_max_size": 16, "num_patches": 256, "qk_norm": "rms",
              "x_block_self_attn_layers": [0], "register_length": register_length,
              "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 32, "out_features": 128}}}
    return _patcher(comfy.supported_models.SD3(config).get_model({}))


def _sample(model, noise, positive, negative, steps, cfg):
    import comfy.sample

    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, torch.zeros_like(noise),
                               disable_pbar=True, seed=5)


def sample_flux(model, batch=3, latent=LATENT, steps=2, cfg=1.0):
    gen = torch.Generator().manual_seed(5)
    cond = [[torch.randn(1, TEXT, 32, generator=gen), {"pooled_output": torch.randn(1, 32, generator=gen), "guidance": 3.5}]]
    return _sample(model, torch.randn(batch, 16, *latent, generator=gen), cond, cond, steps, cfg)


def sample_flux2(model, batch=3, latent=LATENT_FLUX2, steps=2, cfg=1.0, refs=0):
    """128-channel latents; `refs` edit references per photo (each photo its own, as ReferenceLatent gives)."""
    gen = torch.Generator().manual_seed(5)
    extra = {"reference_latents": [torch.randn(batch, 128, *latent, generator=gen) for _ in range(refs)]} if refs else {}
    positive = [[torch.randn(1, TEXT, 32, generator=gen), {"pooled_output": torch.zeros(1, 32), "guidance": 4.0, **extra}]]
    negative = [[torch.randn(1, TEXT, 32, generator=gen), {"pooled_output": torch.zeros(1, 32), "guidance": 4.0, **extra}]]
    return _sample(model, torch.randn(batch, 128, *latent, generator=gen), positive, negative, steps, cfg)


def sample_qwen_image(model, batch=3, latent=LATENT, steps=2, cfg=2.0, frames=1, refs=1):
    """A 5-D latent with `refs` edit references per photo (each photo's own, as ReferenceLatent gives)."""
    gen = torch.Generator().manual_seed(5)
    extra = {"reference_latents": [torch.randn(batch, 16, 1, *latent, generator=gen) for _ in range(refs)]} if refs else {}
    positive = [[torch.randn(1, TEXT, 32, generator=gen), dict(extra)]]
    negative = [[torch.randn(1, TEXT, 32, generator=gen), dict(extra)]]
    return _sample(model, torch.randn(batch, 16, frames, *latent, generator=gen), positive, negative, steps, cfg)


def sample_sd3(model, batch=3, latent=LATENT, steps=2, cfg=2.0):
    gen = torch.Generator().manual_seed(5)
    positive = [[torch.randn(1, TEXT, 32, generator=gen), {"pooled_output": torch.randn(1, 32, generator=gen)}]]
    negative = [[torch.randn(1, TEXT, 32, generator=gen), {"pooled_output": torch.randn(1, 32, generator=gen)}]]
    return _sample(model, torch.randn(batch, 16, *latent, generator=gen), positive, negative, steps, cfg)


# name -> (build, sample): every DiT family the pack supports.
FAMILIES = {"flux": (flux, sample_flux), "flux2": (flux2, sample_flux2), "qwen-image": (qwen_image, sample_qwen_image),
            "sd3": (sd3, sample_sd3)}
# name -> the latent each family samples for 96x80 px images: [C, (frames,) h, w].
LATENT_SHAPES = {"flux": (16, *LATENT), "flux2": (128, *LATENT_FLUX2), "qwen-image": (16, 1, *LATENT),
                 "sd3": (16, *LATENT)}
