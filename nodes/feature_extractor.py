"""EdichoFeatureExtractor: DIFT features from the host's own loaded model."""
import torch
from comfy_api.latest import io

import comfy.model_management
import comfy.samplers
import comfy.utils

from ..kernels.features import draws_per_call, split_draws
from .types import DiftFeatures, Features
from .families import default_up_level, output_block_of_up_level, unet_of

NODE = "EdichoFeatureExtractor"
AUTO = -1
# Loading a model to sample a batch, the host reserves its memory estimate for twice the batch
# (sampler_helpers.estimate_memory): draws are batched so that this reservation fits in free memory.
MEMORY_MARGIN = 2.0


class _Captured(Exception):
    """Raised once the chosen block's input is captured, so the rest of the UNet never runs."""


def _capture_patch(block_id, store):
    def patch(h, hsp, transformer_options):
        if transformer_options["block"] == ("output", block_id):
            store.append(h)
            raise _Captured
        return h, hsp
    return patch


def _one_call_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """A 'sampler' that evaluates the model once at sigmas[0]: the host then does the rest."""
    return model(x, sigmas[0] * x.new_ones([x.shape[0]]), **(extra_args or {}))


def empty_conditioning(model):
    """A zero text embedding (with a zero pooled vector for families that need one)."""
    config = model.model.model_config.unet_config
    context_dim = config.get("context_dim") or 768
    extra = {}
    if config.get("adm_in_channels"):
        extra["pooled_output"] = torch.zeros(1, 1280)
    return [[torch.zeros(1, 77, context_dim), extra]]


def ensemble_noises(latent_shape, ensemble, seed):
    """The `ensemble` noise draws `[B, C, h, w]` used for one extraction, in order."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(latent_shape, generator=generator) for _ in range(ensemble)]


class FeaturePass:
    """One model, one image group, one block: call with a noise draw to get that draw's features."""

    def __init__(self, model, vae, images, conditioning, timestep, up_level):
        unet = unet_of(model, NODE)
        self.up_level = default_up_level(unet) if up_level == AUTO else up_level
        self.block_id = output_block_of_up_level(unet, self.up_level)
        self.latent = vae.encode(images[:, :, :, :3])
        sigma = model.get_model_object("model_sampling").sigma(torch.tensor(float(timestep))).reshape(1)
        self.sigmas = torch.cat([sigma, sigma.new_zeros(1)])
        self._store = []
        patched = model.clone()
        patched.set_model_output_block_patch(_capture_patch(self.block_id, self._store))
        self.guider = comfy.samplers.CFGGuider(patched)
        self.guider.set_conds(conditioning, conditioning)
        self.guider.set_cfg(1.0)
        self.sampler = comfy.samplers.KSAMPLER(_one_call_sampler)

    def __call__(self, noise):
        """Features `[k*B, C, h, w]` (float32) for k noise draws `[k*B, C', h', w']` (draw-major) in one model call."""
        draws = noise.shape[0] // self.latent.shape[0]
        with torch.no_grad():
            try:
                self.guider.sample(noise, self.latent.repeat(draws, 1, 1, 1), self.sampler, self.sigmas, disable_pbar=True)
            except _Captured:
                pass
        if not self._store:
            raise RuntimeError(f"{NODE}: the UNet never reached output block {self.block_id}; another patch "
                               f"may be skipping blocks")
        return self._store.pop().float().to(comfy.model_management.intermediate_device())


def fitting_draws(model, latent_shape, ensemble):
    """How many noise draws one UNet call can take in the memory left on the model's device once its weights are loaded."""
    mm = comfy.model_management
    device = model.load_device
    weights_to_load = 0
    if not mm.is_device_cpu(device):
        weights_to_load = model.model_size() - (model.loaded_size() if model.current_loaded_device() == device else 0)
    free = mm.get_free_memory(device) - weights_to_load - mm.minimum_inference_memory()
    return draws_per_call(ensemble, free, MEMORY_MARGIN * model.memory_required(list(latent_shape)))


def extract_features(model, vae, images, conditioning, timestep, up_level, ensemble, seed, progress=None,
                     per_call=None):
    """Mean over `ensemble` noise draws of the decoder-level features: IMAGE [B, H, W, C] -> ([B, C, h, w], latent grid, level).

    Draws are batched into as few UNet calls as free memory allows (`per_call` draws at most, if given).
    The features are the same for the same seed and the same batching; another batching changes the
    last bits of float rounding (matrix kernels round differently for another batch size).
    """
    feature_pass = FeaturePass(model, vae, images, conditioning, timestep, up_level)
    latent_shape = feature_pass.latent.shape
    noises = ensemble_noises(latent_shape, ensemble, seed)
    if per_call is None:
        per_call = fitting_draws(model, latent_shape, ensemble)
    total, done = None, 0
    for draws in split_draws(ensemble, per_call):
        comfy.model_management.throw_exception_if_processing_interrupted()
        batched = feature_pass(torch.cat(noises[done:done + draws]))
        # Summed draw by draw in order, as one draw per call would.
        for draw in batched.split(latent_shape[0]):
            total = draw if total is None else total + draw
        done += draws
        if progress is not None:
            progress.update(draws)
    return total / ensemble, tuple(latent_shape[-2:]), feature_pass.up_level


def batch_of(images, node=NODE):
    """An IMAGE batch of at least 2 (a reference and a target), or a clear error."""
    if images.shape[0] < 2:
        raise ValueError(f"{node}: got a batch of {images.shape[0]} image; Edicho needs at least 2 "
                         f"(a reference and a target). Batch the photos first (Edicho Batch Images).")
    return images


class EdichoFeatureExtractor(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE,
            display_name="Edicho Feature Extractor (DIFT)",
            category="edicho/correspondence",
            description="Diffusion features (DIFT) of every image, computed once; feed them to Edicho Matcher.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model whose features are used (SD1.x, SD2.x or SDXL UNet)."),
                io.Vae.Input("vae", tooltip="The VAE that encodes the images into the model's latent space."),
                io.Image.Input("images", tooltip="The group of photos, one batch, all the same size (use Edicho Batch Images for mixed sizes)."),
                io.Conditioning.Input("conditioning", optional=True,
                                      tooltip="Prompt for the feature pass. DIFT uses an empty prompt: connect CLIP Text Encode with empty text. Unconnected: a zero text embedding."),
                io.Int.Input("timestep", default=261, min=0, max=999,
                             tooltip="Noise level of the feature pass, in training timesteps of 1000 (DIFT: 261)."),
                io.Int.Input("up_level", default=AUTO, min=AUTO, max=3,
                             tooltip="Decoder level whose output is the feature (DIFT up_ft_index). -1 = auto, DIFT's 1/16 of "
                                     "the image side: 1 on SD1.x/SD2.x (DIFT's default), 0 on SDXL (1280 channels)."),
                io.Int.Input("ensemble", default=8, min=1, max=64,
                             tooltip="Noise draws averaged (DIFT: 8), batched into as few model calls as free memory allows. "
                                     "Fewer is faster, noisier."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the noise draws: the same seed gives the same features (up to float rounding where "
                                     "free memory lets more or fewer draws share one model call)."),
            ],
            outputs=[Features.Output(display_name="features")],
        )

    @classmethod
    def execute(cls, model, vae, images, timestep, up_level, ensemble, seed, conditioning=None) -> io.NodeOutput:
        images = batch_of(images)
        conditioning = conditioning if conditioning is not None else empty_conditioning(model)
        progress = comfy.utils.ProgressBar(ensemble)
        features, latent_grid, up_level = extract_features(model, vae, images, conditioning, timestep, up_level,
                                                           ensemble, seed, progress)
        return io.NodeOutput(DiftFeatures(features, tuple(images.shape[1:3]), latent_grid, up_level, timestep))
