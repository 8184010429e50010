"""Upstream's Qwen-Image 2.1 class (ComfyUI >= 0.37) at a reduced size, real code but not loader-detected, and
sampling through the host's sampler: what tests/test_qwen_image21.py patches and samples.

On a host that has the class (>= 0.37) it is the host's own. On the 0.33.0 tree it is upstream's file from the
overlay (`<hosts dir>/overlays/qwen-image-2.1`, see its README) with the three modules it needs: those are loaded
under their own names only while the class is imported, except `comfy.model_prefetch`, which the class reads at
every forward and which stays until the test module ends; every other test keeps the tree's own modules. What the
class needs of the host and 0.33.0 lacks is added by `add_missing_host_bits`, for as long as those modules stay.
Text is 32 wide and `TEXT` tokens long; the latent `LATENT` (one token per cell): 96x80 px images.
"""
import importlib
import importlib.util
import inspect
import math
import sys
from pathlib import Path

import torch

import setup_host

LATENT = (6, 5)  # 1/16 of 96x80 px, one token per cell
TEXT = 6
OVERLAY = setup_host.OVERLAY
MODULE = "comfy.ldm.qwen_image21.model"
# In 0.33.0 without what the class takes from them: the overlay's, while the class is imported.
IMPORT_ONLY = ("comfy.ldm.modules.attention", "comfy.ldm.wan.model_animate2")
# Looked up by the class at every forward: the overlay's until the test module ends.
PER_FORWARD = "comfy.model_prefetch"
# What the overlaid modules import from the tree: imported first, so that they bind the tree's own attention.
TREE_FIRST = ("comfy.ldm.flux.layers", "comfy.ldm.flux.math", "comfy.ldm.lightricks.model", "comfy.ldm.wan.model",
              "comfy.ops", "comfy.quant_ops", "comfy.rmsnorm", "comfy.memory_management", "comfy.model_management")


def host_has_class(comfyui_path):
    """Whether the host tree has upstream's Qwen-Image 2.1 (ComfyUI >= 0.37)."""
    return (Path(comfyui_path) / MODULE.replace(".", "/")).with_suffix(".py").exists()


def why_not_runnable(comfyui_path):
    """Why upstream's class can't run on this host (a sentence), or None."""
    if host_has_class(comfyui_path):
        return None
    version = setup_host.host_version(Path(comfyui_path))
    if version != "0.33.0":
        return (f"ComfyUI {version} has no Qwen-Image 2.1 (>= 0.37) and the overlay in {OVERLAY} is for the 0.33.0 "
                f"tree only (run with --host 0.33)")
    if not (OVERLAY / MODULE.replace(".", "/")).with_suffix(".py").exists():
        return f"no Qwen-Image 2.1 overlay at {OVERLAY} (set EDICHO_HOSTS_DIR to the folder with overlays/)"
    if importlib.util.find_spec("comfy_aimdo.malloc_graph") is None:
        return "the overlay needs comfy-aimdo 0.5.5 (comfy_aimdo.malloc_graph); ./edicho setup --host 0.33 installs it"
    return None


def add_missing_host_bits(monkeypatch):
    """What upstream's class needs of the host and 0.33.0 lacks, added through `monkeypatch` where missing: the two
    command-line flags upstream's model_prefetch reads, and pin_memory's `evict_active` keyword."""
    import comfy.cli_args
    import comfy.model_management

    for flag in ("disable_comfy_compiler", "assert_graph_breaks"):
        if not hasattr(comfy.cli_args.args, flag):
            # upstream's default: off
            monkeypatch.setattr(comfy.cli_args.args, flag, False, raising=False)
    pin_memory = comfy.model_management.pin_memory
    if "evict_active" not in inspect.signature(pin_memory).parameters:
        # The prefix cache's store passes evict_active=False; 0.33.0's pin_memory(tensor) pins the same either way.
        monkeypatch.setattr(comfy.model_management, "pin_memory", lambda tensor, evict_active=False: pin_memory(tensor))


def _load(name, monkeypatch):
    """The overlay's file for module `name`, loaded under that name (undone by `monkeypatch`)."""
    spec = importlib.util.spec_from_file_location(name, (OVERLAY / name.replace(".", "/")).with_suffix(".py"))
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        monkeypatch.setattr(sys.modules[parent], child, module, raising=False)
    spec.loader.exec_module(module)
    return module


def upstream_class(comfyui_path, monkeypatch):
    """`QwenImage21Transformer2DModel`: the host's own, or the overlay's on the 0.33.0 tree (`monkeypatch`, a
    module-scoped `pytest.MonkeyPatch`, undoes it)."""
    if host_has_class(comfyui_path):
        return importlib.import_module(MODULE).QwenImage21Transformer2DModel
    for name in TREE_FIRST:
        importlib.import_module(name)
    import pytest

    with pytest.MonkeyPatch.context() as while_importing:
        for name in IMPORT_ONLY:
            _load(name, while_importing)
        _load(PER_FORWARD, monkeypatch)
        return _load(MODULE, monkeypatch).QwenImage21Transformer2DModel


def _stand_in_model_base(transformer_class):
    """Stands in for upstream's `model_base.QwenImage21` (>= 0.37): the host's QwenImage model base (ModelType
    FLUX, reference latents) around the 2.1 class, one prefix cache per sampling run, `image_slots` passed on."""
    import comfy.conds
    import comfy.model_base

    class QwenImage21(comfy.model_base.QwenImage):
        def __init__(self, model_config, model_type=comfy.model_base.ModelType.FLUX, device=None):
            super().__init__(model_config, model_type, device=device, unet_model=transformer_class)

        @property
        def current_patcher(self):
            return self._current_patcher

        @current_patcher.setter
        def current_patcher(self, patcher):
            # As upstream: set at the start and end of each sampling run; no cache while hooks can repatch weights.
            self._current_patcher = patcher
            diffusion_model = getattr(self, "diffusion_model", None)
            if diffusion_model is not None:
                diffusion_model.current_patcher = patcher
                diffusion_model.reset_prefix_cache(patcher is not None and len(patcher.hook_patches) == 0)

        def extra_conds(self, **kwargs):
            out = super().extra_conds(**kwargs)
            if kwargs.get("image_slots") is not None:
                out["image_slots"] = comfy.conds.CONDConstant(kwargs["image_slots"])
            return out

    return QwenImage21


def qwen_image21(transformer_class, blocks=2):
    """Upstream's class at `blocks` single-stream blocks of 2 heads of 32, text 32 wide, in the stand-in model base
    with upstream's sampling settings (shift 0.69) and latent shape (64 channels, 2-D, 1/16), seeded random weights."""
    import comfy.latent_formats
    import comfy.model_patcher
    import comfy.supported_models

    model_base = _stand_in_model_base(transformer_class)

    class QwenImage21Latent(comfy.latent_formats.LatentFormat):
        # upstream's shape; its scale and shift are left out (no VAE here)
        latent_channels = 64
        spacial_downscale_ratio = 16

    class QwenImage21(comfy.supported_models.QwenImage):
        # named as upstream's supported_models.QwenImage21, which the errors name
        unet_config = {"image_model": "qwen_image21"}
        sampling_settings = {"multiplier": 1.0, "shift": 0.69}
        latent_format = QwenImage21Latent

        def get_model(self, state_dict, prefix="", device=None):
            return model_base(self, device=device)

    config = {"image_model": "qwen_image21", "in_channels": 64, "out_channels": 64, "num_layers": blocks,
              "attention_head_dim": 32, "num_attention_heads": 2, "context_in_dim": 32, "axes_dims_rope": (8, 12, 12)}
    model = QwenImage21(config).get_model({})
    generator = torch.Generator().manual_seed(0)
    for tensor in model.diffusion_model.state_dict(keep_vars=True).values():
        # No biases: the 1-D tensors are norm scales, about 1.
        tensor.data = (torch.randn(tensor.shape, generator=generator) / math.sqrt(tensor.shape[-1])
                       if tensor.ndim > 1 else 1.0 + 0.1 * torch.randn(tensor.shape, generator=generator))
    return comfy.model_patcher.ModelPatcher(model, torch.device("cpu"), torch.device("cpu"))


def without_prefix_cache(model):
    """A clone with the prefix cache off, as upstream's QwenImage21Cache node sets it (device "off")."""
    patched = model.clone()
    patched.model_options.setdefault("transformer_options", {})["qwen_image21_cache"] = {"device": "off",
                                                                                         "dtype": "default"}
    return patched


def sample_qwen21(model, batch=3, latent=LATENT, steps=2, cfg=2.0, refs=1, ref_latent=None, frames=None, seed=5):
    """[B, 64, h, w] latents ([B, 64, frames, h, w] with `frames`) with `refs` edit references per photo (each photo
    its own, as ReferenceLatent with the photos' latents gives) on `ref_latent` (the latent's grid by default),
    different prompts for cond and uncond."""
    import comfy.sample

    gen = torch.Generator().manual_seed(seed)
    references = [torch.randn(batch, 64, *(ref_latent or latent), generator=gen) for _ in range(refs)]
    extra = {"reference_latents": references} if refs else {}
    positive = [[torch.randn(1, TEXT, 32, generator=gen), dict(extra)]]
    negative = [[torch.randn(1, TEXT, 32, generator=gen), dict(extra)]]
    noise = torch.randn(batch, 64, *([frames] if frames else []), *latent, generator=gen)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, torch.zeros_like(noise),
                               disable_pbar=True, seed=seed)
