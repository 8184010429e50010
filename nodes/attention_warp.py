"""EdichoAttentionWarp: Corr-Attention (Edicho §3.3) as attn1 replace patches on a model clone."""
import torch
from comfy_api.latest import io

from comfy.ldm.modules.attention import optimized_attention

from ..kernels.corr_attention import MODES, gather_attention_inputs
from .layer_selection import parse_layers
from .patch_support import CorrespondenceOnDevice, check_batch
from .step_range import StepGate, StepRange
from .types import CorrespondenceType
from .unet_layout import self_attention_layers, unet_of

NODE = "EdichoAttentionWarp"


def host_attention(q, k, v, extra_options):
    """The host's own self-attention, as CrossAttention.forward calls it."""
    return optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options["attn_precision"],
                               transformer_options=extra_options)


class CorrAttentionPatch:
    """attn1 replace for one layer: targets attend to the reference's K/V with warped queries.

    Wraps whatever replace was already set on that layer (`inner`), so another pack's attention
    still runs, on Edicho's inputs. Clones share one instance: it holds no per-clone state.
    """

    def __init__(self, corr, gate, strength, mode, inner=None):
        self.corr = corr
        self.gate = gate
        self.strength = strength
        self.mode = mode
        self.inner = inner or host_attention

    def __deepcopy__(self, memo):
        return self

    def to(self, device_or_dtype):
        return self

    def __call__(self, q, k, v, extra_options):
        if self.strength == 0.0 or not self.gate.update(extra_options["sigmas"]).is_active:
            return self.inner(q, k, v, extra_options)
        check_batch(NODE, self.corr.corr, q.shape[0], extra_options)
        h, w = extra_options["activations_shape"][-2:]
        if q.shape[1] != h * w:
            raise ValueError(f"{NODE}: this layer has {q.shape[1]} tokens for a {w}x{h} grid: another patch "
                             f"(token merging such as ToMe?) changed them. Remove it or apply it after Edicho's layers.")
        sources = self.corr.attention_sources(q.device, (h, w), len(extra_options["cond_or_uncond"]))
        q2, k2, v2 = gather_attention_inputs(q, k, v, sources, mode=self.mode)
        out = self.inner(q2, k2, v2, extra_options)
        if self.strength < 1.0:
            out = torch.lerp(self.inner(q, k, v, extra_options), out, self.strength)
        return out


def apply_attention_warp(model, corr, layers, start_percent, end_percent, strength, mode):
    """A clone of `model` with Corr-Attention on the selected self-attention layers."""
    unet = unet_of(model, NODE)
    keys = parse_layers(layers, self_attention_layers(unet), NODE)
    gate = StepGate(StepRange.from_percent(model, start_percent, end_percent, NODE))
    shared = CorrespondenceOnDevice(corr)
    patched = model.clone()
    patched.set_model_emb_patch(gate)
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})
    for key in keys:
        patch = CorrAttentionPatch(shared, gate, strength, mode, inner=existing.get(key))
        patched.set_model_attn1_replace(patch, key[0], key[1], key[2])
    return patched


class EdichoAttentionWarp(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE,
            display_name="Edicho Attention Warp (Corr-Attention)",
            category="edicho/patches",
            description="Each target's decoder self-attention queries the reference's keys/values, with the "
                        "reference's queries warped onto it through the correspondence (Edicho Corr-Attention).",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (a clone is patched; the input is untouched)."),
                CorrespondenceType.Input("correspondence", tooltip="From Edicho Matcher, built on the same image batch that is sampled."),
                io.String.Input("layers", default="output",
                                tooltip="Self-attention layers to patch: 'output' = every decoder layer (the paper's choice); "
                                        "or a list like 'output.3-5, middle', 'input.7' (UNet block numbers)."),
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
