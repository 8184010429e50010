"""EdichoAttentionWarp: Corr-Attention (Edicho §3.3) on a model clone, through the model family's patch points."""
from comfy_api.latest import io

from ..kernels.corr_attention import MODES
from .families import AUTO, CorrespondenceOnDevice, add_sampling_check, family_of, parse_layers
from .step_range import StepGate, StepRange
from .types import CorrespondenceType

NODE = "EdichoAttentionWarp"


def apply_attention_warp(model, corr, layers, start_percent, end_percent, strength, mode):
    """A clone of `model` with Corr-Attention on the selected attention layers."""
    family = family_of(model, NODE)
    keys = parse_layers(family.default_layers(model) if layers.strip().lower() == AUTO else layers,
                        family.attention_layers(model), NODE)
    gate = StepGate(StepRange.from_percent(model, start_percent, end_percent, NODE))
    patched = model.clone()
    add_sampling_check(patched, corr, NODE, family)
    family.patch_attention(patched, CorrespondenceOnDevice(corr), keys, gate, strength, mode, NODE)
    return patched


class EdichoAttentionWarp(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE,
            display_name="Edicho Attention Warp (Corr-Attention)",
            category="edicho/patches",
            description="Each target's self-attention queries the reference's keys/values, with the reference's "
                        "queries warped onto it through the correspondence (Edicho Corr-Attention). UNet (SD1.x, "
                        "SD2.x, SDXL): decoder self-attention. Flux.1 (dev, schnell, Kontext), Qwen-Image(-Edit), "
                        "SD3/SD3.5: the image tokens of joint attention take the reference's attention output at the "
                        "match; text and reference-image (Kontext, Qwen edit) tokens are left alone.",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (a clone is patched; the input is untouched)."),
                CorrespondenceType.Input("correspondence", tooltip="From Edicho Matcher, built on the same image batch that is sampled."),
                io.String.Input("layers", default=AUTO,
                                tooltip="Attention layers to patch. auto = the family's default: UNet 'output' (every "
                                        "decoder layer, the paper's choice), Flux 'single' (every single-stream block), "
                                        "Qwen-Image and SD3 the second half of the blocks ('double.30-59' on Qwen-Image). "
                                        "Or a list: UNet 'output.3-5, middle', 'input.7' (block numbers); Flux "
                                        "'double.0-18, single.0-37'; Qwen-Image, SD3 'double.10-23'."),
                io.Float.Input("start_percent", default=0.08, min=0.0, max=1.0, step=0.01,
                               tooltip="Start of the active range, in percent of denoising (paper: step 4 of 50 = 0.08)."),
                io.Float.Input("end_percent", default=0.8, min=0.0, max=1.0, step=0.01,
                               tooltip="End of the active range (paper: step 40 of 50 = 0.80)."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Blend with the unpatched attention output: 1 = Edicho as in the paper, 0 = off."),
                io.Combo.Input("mode", options=list(MODES), default="warp",
                               tooltip="warp: Edicho (queries warped through the correspondence). share: MasaCtrl/DragonDiffusion-style K/V sharing without warping, for comparison."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, correspondence, layers, start_percent, end_percent, strength, mode) -> io.NodeOutput:
        return io.NodeOutput(apply_attention_warp(model, correspondence, layers, start_percent, end_percent, strength, mode))
