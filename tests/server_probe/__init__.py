"""Probe nodes that tests/test_dynamic_vram.py installs in a real server next to the pack, to ask the server's own
process what only it knows: which model patcher its loader made, whether DynamicVRAM is on, which UNet output
blocks the feature extractor ran, how much of the UNet is loaded (streamed in) after it.

EdichoProbeUNet, between the checkpoint loader and the extractor, starts counting; EdichoProbeFeatures, between
the extractor and the matcher, stops counting, saves the features and reports in the prompt's history. Their `run`
input changes from one prompt to the next, so that both and everything after them run again on a server that
keeps the loaded model.
"""
import sys
from pathlib import Path

import torch

import folder_paths

# id of a diffusion model -> (hook handles, calls per output block) while EdichoProbeUNet counts.
_COUNTING = {}
SUBFOLDER = "edicho-probe"


def _dynamic_vram_active():
    # comfy.memory_management (and DynamicVRAM) exists from 0.33 on; main.py sets aimdo_enabled when it turns it on.
    return bool(getattr(sys.modules.get("comfy.memory_management"), "aimdo_enabled", False))


class EdichoProbeUNet:
    CATEGORY = "edicho/testing"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "count"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "run": ("INT", {"default": 0, "min": 0})}}

    def count(self, model, run):
        unet = model.model.diffusion_model
        calls = [0] * len(unet.output_blocks)
        # The host runs a block's layers one by one (forward_timestep_embed), so each block's first layer counts it.
        handles = [block[0].register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
                   for i, block in enumerate(unet.output_blocks)]
        _COUNTING[id(unet)] = handles, calls
        return (model,)


class EdichoProbeFeatures:
    CATEGORY = "edicho/testing"
    RETURN_TYPES = ("EDICHO_FEATURES",)
    FUNCTION = "report"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"features": ("EDICHO_FEATURES",), "model": ("MODEL",),
                             "run": ("INT", {"default": 0, "min": 0})}}

    def report(self, features, model, run):
        handles, calls = _COUNTING.pop(id(model.model.diffusion_model))
        for handle in handles:
            handle.remove()
        folder = Path(folder_paths.get_output_directory()) / SUBFOLDER
        folder.mkdir(parents=True, exist_ok=True)
        name = f"run-{run}-features.pt"
        torch.save(features.features, folder / name)
        record = {"patcher": type(model).__name__, "dynamic_vram_active": _dynamic_vram_active(),
                  "output_block_calls": calls, "unet_bytes": model.model_size(),
                  "unet_loaded_bytes": model.loaded_size(), "features_file": f"{SUBFOLDER}/{name}"}
        return {"ui": {"probe": [record]}, "result": (features,)}


NODE_CLASS_MAPPINGS = {"EdichoProbeUNet": EdichoProbeUNet, "EdichoProbeFeatures": EdichoProbeFeatures}
