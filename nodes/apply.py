"""EdichoApply: extractor, matcher and both patches with the paper's defaults, in one node."""
from comfy_api.latest import io

import comfy.utils

from .attention_warp import apply_attention_warp
from .feature_extractor import AUTO, batch_of, empty_conditioning, extract_features
from .matcher import build_correspondence
from .noise_fuser import apply_noise_fuser
from .types import CorrespondenceType, DiftFeatures

NODE = "EdichoApply"
PAPER = {"timestep": 261, "up_level": AUTO, "ensemble": 8, "start_percent": 0.08, "end_percent": 0.8,
         "lam": 0.8, "gamma": 0.9}


class EdichoApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE,
            display_name="Edicho Apply (all in one)",
            category="edicho",
            description="Features, matching, Corr-Attention and Corr-CFG with the paper's defaults. For control "
                        "over each stage use the four separate Edicho nodes.",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (a clone is patched; the input is untouched)."),
                io.Vae.Input("vae", tooltip="The VAE of that model."),
                io.Image.Input("images", tooltip="The photos to edit consistently, one batch of the same size; sample this same batch."),
                io.Int.Input("reference", default=0, min=0, max=63, tooltip="Batch index of the reference image."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=False, tooltip="Seed of the feature noise and the injection mask."),
            ],
            outputs=[io.Model.Output(), CorrespondenceType.Output(display_name="correspondence")],
        )

    @classmethod
    def execute(cls, model, vae, images, reference, seed) -> io.NodeOutput:
        images = batch_of(images, NODE)
        progress = comfy.utils.ProgressBar(PAPER["ensemble"])
        features, grid, up_level = extract_features(model, vae, images, empty_conditioning(model), PAPER["timestep"],
                                                    PAPER["up_level"], PAPER["ensemble"], seed, progress)
        dift = DiftFeatures(features, tuple(images.shape[1:3]), grid, up_level, PAPER["timestep"])
        corr = build_correspondence(dift, reference, True, 0.0, 512)
        patched = apply_attention_warp(model, corr, "output", PAPER["start_percent"], PAPER["end_percent"], 1.0, "warp")
        patched = apply_noise_fuser(patched, corr, PAPER["lam"], PAPER["gamma"], PAPER["start_percent"],
                                    PAPER["end_percent"], seed, "literal")
        return io.NodeOutput(patched, corr)
