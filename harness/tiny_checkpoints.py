"""Tiny random-weight checkpoints with the real key layout, built from the host's own module
classes so that the host's CheckpointLoaderSimple detects them as the family they claim.

A family is a config (UNet or DiT config in the host's detected form, text encoder, VAE), not
code: adding SDXL or SD2.x means adding an entry to FAMILIES (a DiT on a class not built yet,
one to DIT_MODULES too).
"""
import functools
import hashlib
import inspect
import json
import math
import re
from pathlib import Path

import torch

# SD1.x detection fixes model_channels=320, context_dim=768, conv proj_in, in_channels=4 and
# no label_emb; widths below 320 are refused ("Could not detect model type"). Free: levels,
# res blocks per level, transformer depth per level, the middle block. This config keeps SD1.x's
# shape (4 levels, attention on the middle levels only, so decoder self-attention runs at two
# grids: 1/16 and 1/32 of the image) with one res block per level, and a middle block with
# attention (cheap at 1/64 of the image) for layer selection and chaining with core patches.
SD15_TINY_UNET = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1, 1, 1, 1],
    "channel_mult": [1, 1, 1, 1],
    "transformer_depth": [0, 1, 1, 0],
    # One entry per output block, shallowest level first (the UNet pops from the end).
    "transformer_depth_output": [0, 0, 1, 1, 1, 1, 0, 0],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "num_heads": 8,
    "num_head_channels": -1,
}

# The real SD1.5 UNet (860 M params), for benchmarks at full size with random weights.
SD15_FULL_UNET = SD15_TINY_UNET | {
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1,
}

# SDXL detection fixes model_channels=320, context_dim=2048, adm_in_channels=2816, linear proj_in
# and the input transformer depths [0, 0, 2, 2, 10, 10] (2 res blocks on 3 levels); channel_mult,
# the middle and the output depths are free. This keeps the real shape (attention on the two
# deeper levels, decoder self-attention in output blocks 0-5 at 1/32 and 1/16 of the image) at
# width 320 with decoder depths 2 and 1 instead of 10 and 2.
SDXL_TINY_UNET = SD15_TINY_UNET | {
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "num_res_blocks": [2, 2, 2],
    "channel_mult": [1, 1, 1],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_output": [0, 0, 0, 1, 1, 1, 2, 2, 2],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": True,
    "context_dim": 2048,
    "num_heads": -1,
    "num_head_channels": 64,
}

# The real SDXL base UNet (2.6 B params), for benchmarks at full size with random weights.
SDXL_FULL_UNET = SDXL_TINY_UNET | {
    "channel_mult": [1, 2, 4],
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "transformer_depth_middle": 10,
}

# SD2.x detection fixes model_channels=320, context_dim=1024, linear proj_in and no label_emb.
# The host tells v-prediction from eps by the spread of output block 11's first norm bias, so
# this keeps SD2's real shape (2 res blocks on 4 levels, attention on the three shallower ones)
# at width 320.
SD2_TINY_UNET = SD15_TINY_UNET | {
    "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_linear_in_transformer": True,
    "context_dim": 1024,
    "num_heads": -1,
    "num_head_channels": 64,
}
SD2_V_MARKER = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"

# Text encoders are named as the host names them (clip_l, clip_g, clip_h) with its own config
# files; the family's host class writes them in the checkpoint's layout.
SD1_TEXT = {"clip_l": "sd1_clip_config.json"}
SD2_TEXT = {"clip_h": "text_encoders/sd2_clip_config.json"}
SDXL_TEXT = {"clip_l": "sd1_clip_config.json", "clip_g": "clip_config_bigg.json"}

FAMILIES = {
    "sd15": {"unet": SD15_TINY_UNET, "text_encoders": SD1_TEXT, "vae": "taesd", "expected_model_type": "SD15"},
    # The inpainting UNet: 4 latent + 1 mask + 4 masked-image channels in.
    "sd15-inpaint": {"unet": SD15_TINY_UNET | {"in_channels": 9}, "text_encoders": SD1_TEXT, "vae": "taesd",
                     "expected_model_type": "SD15"},
    "sd15-full": {"unet": SD15_FULL_UNET, "text_encoders": SD1_TEXT, "vae": "taesd", "expected_model_type": "SD15"},
    # InstructPix2Pix: 4 latent + 4 source-image latent channels in.
    "sd15-ip2p": {"unet": SD15_TINY_UNET | {"in_channels": 8}, "text_encoders": SD1_TEXT, "vae": "taesd",
                  "expected_model_type": "SD15_instructpix2pix"},
    # A ControlNet for the tiny SD1.x UNet (ControlNetLoader, models/controlnet/): the encoder half
    # of the same config, a 3-channel hint, in the original "control_model." layout.
    "sd15-controlnet": {"controlnet": SD15_TINY_UNET, "hint_channels": 3},
    "sd2": {"unet": SD2_TINY_UNET, "text_encoders": SD2_TEXT, "vae": "taesd", "expected_model_type": "SD20"},
    "sd2-v": {"unet": SD2_TINY_UNET, "text_encoders": SD2_TEXT, "vae": "taesd", "expected_model_type": "SD20",
              "spread": {SD2_V_MARKER: 0.2}},
    "sdxl": {"unet": SDXL_TINY_UNET, "text_encoders": SDXL_TEXT, "vae": "taesd", "expected_model_type": "SDXL"},
    "sdxl-full": {"unet": SDXL_FULL_UNET, "text_encoders": SDXL_TEXT, "vae": "taesd", "expected_model_type": "SDXL"},
}

# Flux.1 as the host's UNETLoader detects it: the hidden size from img_in, the text and vector
# widths from txt_in and vector_in (so CLIP-L's 768 stands in for T5's 4096, and a tiny SD1.x
# checkpoint's CLIP conditions it), block counts by key, guidance_in = dev. Heads: newer hosts
# (0.33) derive hidden / 128, so 256 wide with 2 double + 2 single blocks is Flux; older ones
# (0.3.75) fix 24 heads of 128, and there the smallest Flux is FLUX_FIXED_HEADS (545 M params).
FLUX_TINY = {
    "image_model": "flux",
    "in_channels": 16,
    "out_channels": 16,
    "vec_in_dim": 768,
    "context_in_dim": 768,
    "hidden_size": 256,
    "mlp_ratio": 4.0,
    "num_heads": 2,
    "depth": 2,
    "depth_single_blocks": 2,
    "axes_dim": [16, 56, 56],
    "theta": 10000,
    "qkv_bias": True,
    "guidance_embed": True,
    "patch_size": 2,
}
FLUX_FIXED_HEADS = {"hidden_size": 3072, "num_heads": 24, "depth": 1, "depth_single_blocks": 1}

# SD3.5 Medium as the host's UNETLoader detects an MMDiT (its "mmdit model" branch): depth from
# x_embedder (hidden = 64 x depth, depth heads of 64, the last block's context side pre-only),
# the text and pooled widths from context_embedder and y_embedder (CLIP-L's 768, so a tiny SD1.x
# checkpoint's CLIP conditions it), RMS q/k norms, an image-only second self-attention on the
# blocks listed (SD3.5 Medium has it on its first 13), pos_embed cropped from a 32 x 32 grid.
# in_channels 16 and no pos_embed scaling is SD3; sampling is flow (CONST).
SD35_MEDIUM_TINY = {
    "in_channels": 16,
    "out_channels": 16,
    "patch_size": 2,
    "depth": 2,
    "input_size": None,
    "adm_in_channels": 768,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 768, "out_features": 128}},
    "num_patches": 1024,
    "pos_embed_max_size": 32,
    "qk_norm": "rms",
    "pos_embed_scaling_factor": None,
    "x_block_self_attn_layers": [0],
}

# Qwen-Image as the host detects it: only in_channels (img_in) and the block count are read;
# the width (24 heads of 128), the text width (3584, Qwen2.5-VL) and the rest are the class
# defaults, so the smallest file is one full-width block (380 M params, 760 MB in fp16).
QWEN_IMAGE_TINY = {"image_model": "qwen_image", "in_channels": 64, "num_layers": 1}

# The Wan 2.1 VAE (also Qwen-Image's) as the host's VAELoader builds it: everything but dim is
# fixed (it reads dim from decoder.head.0.gamma); 8x spatial, 4x temporal, 16 latent channels.
WAN21_VAE_TINY = {"dim": 8, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
                  "temperal_downsample": [False, True, True], "dropout": 0.0}

# FLUX.2 as the host's UNETLoader detects it (the keys of shared modulation): hidden size from img_in,
# text width from txt_in (CLIP-L's 768, so a tiny SD1.x checkpoint's CLIP conditions it), block
# counts by key, guidance_in = dev (Klein has none); patch 1, 4 RoPE axes of 32, MLP ratio 3, no
# biases are fixed. Heads: 0.33 derives hidden / 128, so 128 wide is one head; 0.3.75 fixes 48
# heads, where the smallest FLUX.2 it detects is 6144 wide (1.67 B params): `host_detects` tells.
FLUX2_TINY = {
    "image_model": "flux2",
    "in_channels": 128,
    "out_channels": 128,
    "vec_in_dim": None,
    "context_in_dim": 768,
    "hidden_size": 128,
    "mlp_ratio": 3.0,
    "num_heads": 1,
    "depth": 1,
    "depth_single_blocks": 1,
    "axes_dim": [32, 32, 32, 32],
    "theta": 2000,
    "qkv_bias": False,
    "guidance_embed": False,
    "patch_size": 1,
    "global_modulation": True,
    "mlp_silu_act": True,
    "ops_bias": False,
    "default_ref_method": "index",
    "ref_index_scale": 10.0,
}

FAMILIES |= {
    # Diffusion-model files (UNETLoader, models/diffusion_models/).
    "flux-dev": {"dit": FLUX_TINY, "expected_model_type": "Flux"},
    "flux-schnell": {"dit": FLUX_TINY | {"guidance_embed": False}, "expected_model_type": "FluxSchnell"},
    "sd35-medium": {"dit": SD35_MEDIUM_TINY, "expected_model_type": "SD3"},
    "qwen-image": {"dit": QWEN_IMAGE_TINY, "expected_model_type": "QwenImage"},
    "flux2-klein": {"dit": FLUX2_TINY, "expected_model_type": "Flux2"},
    "flux2-dev": {"dit": FLUX2_TINY | {"guidance_embed": True, "depth": 2, "depth_single_blocks": 2},
                  "expected_model_type": "Flux2"},
    # TAEF1's layout with 16 latent channels, one file (VAELoader, models/vae/).
    "taef1": {"vae_latent_channels": 16},
    # A Wan 2.1 / Qwen-Image VAE, one file (VAELoader, models/vae/).
    "wan21-vae": {"wan_vae": WAN21_VAE_TINY},
    # TAEF2, the FLUX.2 TAE (128 channels at 1/16): the host's own size, two files that VAELoader's "taef2"
    # reads from models/vae_approx/ as taef2_encoder.* and taef2_decoder.*.
    "taef2-encoder": {"tae_part": "taesd_encoder", "vae_latent_channels": 128},
    "taef2-decoder": {"tae_part": "taesd_decoder", "vae_latent_channels": 128},
}

# The host class that builds each DiT config, by the config's "image_model" as the host detects
# it (its MMDiT branch sets none), and the config fields that name a file's size: hosts that
# detect different sizes of one family (Flux's heads) share the cache under different names.
DIT_MODULES = {
    "flux": {"cls": "comfy.ldm.flux.model.Flux", "size": "h{hidden_size}"},
    "flux2": {"cls": "comfy.ldm.flux.model.Flux", "size": "h{hidden_size}"},
    "mmdit": {"cls": "comfy.ldm.modules.diffusionmodules.mmdit.MMDiT", "size": "d{depth}"},
    "qwen_image": {"cls": "comfy.ldm.qwen_image.model.QwenImageTransformer2DModel", "size": "l{num_layers}"},
}

SEED = 20241231


def _dit_kind(config):
    return DIT_MODULES[config.get("image_model", "mmdit")]


def _dit_module(config):
    """The DiT config built by its host class on the meta device."""
    import importlib

    import comfy.ops

    module_name, class_name = _dit_kind(config)["cls"].rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**config, device="meta", operations=comfy.ops.disable_weight_init)


@functools.cache
def family_spec(family):
    """FAMILIES[family] with what depends on the host resolved (the smallest Flux it detects); not to be mutated."""
    import dataclasses

    spec = FAMILIES[family]
    model = spec.get("dit", {}).get("image_model")
    if model not in ("flux", "flux2"):
        return spec
    import comfy.ldm.flux.model

    config = dict(spec["dit"])
    # Newer hosts require it; detection sets no text id axes on Flux.1, the 4th RoPE axis on FLUX.2.
    if "txt_ids_dims" in {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}:
        config["txt_ids_dims"] = [] if model == "flux" else [3]
    if model == "flux" and not _detected_as_built(config):
        config |= FLUX_FIXED_HEADS
    return spec | {"dit": config}


def _detected_as_built(config):
    """Whether the host's detection reads back the heads `config` is built with."""
    import comfy.model_detection

    return comfy.model_detection.detect_unet_config(_dit_module(config).state_dict(), "")["num_heads"] == config["num_heads"]


def host_detects(family):
    """Whether this host's loader detects `family`'s tiny DiT at the size it is built (0.3.75 fixes FLUX.2's heads)."""
    return _detected_as_built(family_spec(family)["dit"])


def _host_modules(spec):
    """Instantiate the family's modules from the host's classes on the meta device."""
    import comfy.clip_model
    import comfy.ops
    import comfy.taesd.taesd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    # inspect, not `module.__file__`: import checkers read attribute access on a host module as a host API.
    comfy_dir = Path(inspect.getfile(comfy.clip_model)).parent
    if "dit" in spec:
        return [("", _dit_module(spec["dit"]))]
    if "wan_vae" in spec:
        import comfy.ldm.wan.vae

        with torch.device("meta"):
            return [("", comfy.ldm.wan.vae.WanVAE(**spec["wan_vae"]))]
    if "vae_latent_channels" in spec:
        with torch.device("meta"):
            tae = comfy.taesd.taesd.TAESD(latent_channels=spec["vae_latent_channels"])
        return [("", getattr(tae, spec["tae_part"]) if "tae_part" in spec else tae)]
    if "controlnet" in spec:
        import comfy.cldm.cldm

        config = {k: v for k, v in spec["controlnet"].items() if k != "out_channels"}
        return [("control_model.", comfy.cldm.cldm.ControlNet(**config, hint_channels=spec["hint_channels"], device="meta",
                                                              operations=comfy.ops.disable_weight_init))]
    parts = [("model.diffusion_model.", UNetModel(**spec["unet"], device="meta", operations=comfy.ops.disable_weight_init))]
    for name, config_file in spec["text_encoders"].items():
        config = json.loads((comfy_dir / config_file).read_text())
        parts.append((f"{name}.transformer.", comfy.clip_model.CLIPTextModel(config, torch.float32, "meta", comfy.ops.manual_cast)))
    if spec["vae"] == "taesd":
        with torch.device("meta"):
            parts.append(("first_stage_model.", comfy.taesd.taesd.TAESD()))
    return parts


def _init_tensor(name, shape, generator):
    """Random weights with sane scales: finite activations through a deep random network."""
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("vae_scale"):
        return torch.ones(shape)
    if leaf == "bias" or name.endswith("vae_shift") or len(shape) == 0:
        return torch.zeros(shape)
    if len(shape) == 1 or leaf == "gamma":
        return torch.ones(shape)  # norm weights (the Wan VAE's RMS norms keep broadcast dims)
    if "embedding" in name:
        return torch.randn(shape, generator=generator) * 0.02
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=generator) / math.sqrt(fan_in)


def build_state_dict(family, seed=SEED):
    """The whole checkpoint state dict for `family`, seeded."""
    import comfy.supported_models

    spec = family_spec(family)
    generator = torch.Generator().manual_seed(seed)
    state, text = {}, {}
    encoders = tuple(spec.get("text_encoders", ()))
    for prefix, module in _host_modules(spec):
        for name, tensor in module.state_dict().items():
            target = text if encoders and prefix.startswith(encoders) else state
            target[prefix + name] = _init_tensor(prefix + name, tuple(tensor.shape), generator)
    if text:
        host_class = getattr(comfy.supported_models, spec["expected_model_type"])
        state.update(host_class(spec["unet"]).process_clip_state_dict_for_saving(text))
    for key, std in spec.get("spread", {}).items():
        state[key] = torch.randn(state[key].shape, generator=generator) * std
    return state


def _store_dtype(name):
    # A full-size random CLIP is 123 M params; fp8 storage halves the file and still loads
    # with finite conditioning (the host upcasts it).
    if name.startswith("cond_stage_model.") or name.startswith("conditioner."):
        return torch.float8_e4m3fn
    return torch.float16


def checkpoint_config_id(family, seed=SEED):
    text = json.dumps({"family": family_spec(family), "seed": seed, "v": 1}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def ensure_checkpoint(family, folder, seed=SEED):
    """Write (once) and return the path of the tiny checkpoint for `family` in `folder`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    spec = family_spec(family)
    # Hosts that detect different sizes share the cache: each size has its own name, so that one
    # host's build never removes the other's as stale.
    stem = f"{family}-{_dit_kind(spec['dit'])['size'].format(**spec['dit'])}" if "dit" in spec else family
    path = folder / f"edicho-tiny-{stem}-{checkpoint_config_id(family, seed)}.safetensors"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(_store_dtype(k)).contiguous() for k, v in build_state_dict(family, seed).items()}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"edicho_tiny": family, "seed": str(seed)})
    tmp.rename(path)
    # Checkpoints of an older config of this family are never used again.
    own_name = re.compile(rf"edicho-tiny-{re.escape(stem)}-[0-9a-f]{{10}}\.safetensors")
    for stale in folder.iterdir():
        if stale != path and own_name.fullmatch(stale.name):
            stale.unlink()
    return path


# How users' reduced-precision files store the diffusion model (the text encoder and VAE stay as
# ensure_checkpoint stores them): every tensor cast to fp8 e4m3fn (`*_fp8_e4m3fn`), the host's
# scaled-fp8 format (`*_fp8_scaled`: each Linear weight divided by its float32 `scale_weight`, cast to
# fp8, an input scale of 1, the rest 16-bit, a `scaled_fp8` marker key, as the host saves it; both hosts
# read it), bf16, or int8 as newer hosts' "int8_tensorwise" files store it (each Linear weight divided by its
# float32 `weight_scale` and rounded to int8, a `comfy_quant` JSON marker per layer; read through comfy-kitchen).
WEIGHTS = ("fp8_e4m3fn", "fp8_scaled", "bf16", "int8")
FP8_MAX = 448.0  # the largest finite float8_e4m3fn
INT8_MAX = 127.0


def ensure_variant(family, folder, weights, seed=SEED):
    """Write (once) and return the path of `family`'s tiny checkpoint with its diffusion model stored as `weights`."""
    from safetensors.torch import load_file, save_file

    if weights not in WEIGHTS:
        raise ValueError(f"ensure_variant: weights must be one of {WEIGHTS}, got {weights!r}")
    source = ensure_checkpoint(family, folder, seed)
    path = source.with_name(f"{source.stem}-{weights}.safetensors")
    if path.exists():
        return path
    prefix, module = _host_modules(family_spec(family))[0]
    linear = {f"{prefix}{name}.weight" for name, layer in module.named_modules() if isinstance(layer, torch.nn.Linear)}
    state = {}
    for key, tensor in load_file(str(source)).items():
        if not key.startswith(prefix) or not tensor.is_floating_point():
            state[key] = tensor
        elif weights == "bf16":
            state[key] = tensor.to(torch.bfloat16)
        elif weights == "fp8_e4m3fn":
            state[key] = tensor.to(torch.float8_e4m3fn)
        elif weights == "int8" and key in linear:
            scale = tensor.float().abs().max().clamp(min=1e-12) / INT8_MAX
            state[key] = (tensor.float() / scale).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
            layer = key[:-len("weight")]
            state[layer + "weight_scale"] = scale.reshape(())
            state[layer + "comfy_quant"] = torch.tensor(list(json.dumps({"format": "int8_tensorwise"}).encode()),
                                                        dtype=torch.uint8)
        elif weights == "int8":
            state[key] = tensor
        elif key in linear:
            scale = tensor.float().abs().max().clamp(min=1e-12) / FP8_MAX
            state[key] = (tensor.float() / scale).to(torch.float8_e4m3fn)
            state[key[:-len("weight")] + "scale_weight"] = scale.reshape(())
            state[key[:-len("weight")] + "scale_input"] = torch.ones(())
        else:
            state[key] = tensor
    if weights == "fp8_scaled":
        state[prefix + "scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"edicho_tiny": family, "seed": str(seed), "weights": weights})
    tmp.rename(path)
    # Variants of an older config of this family are never used again.
    own_name = re.compile(rf"{re.escape(source.stem.rsplit('-', 1)[0])}-[0-9a-f]{{10}}-{weights}\.safetensors")
    for stale in path.parent.iterdir():
        if stale != path and own_name.fullmatch(stale.name):
            stale.unlink()
    return path
