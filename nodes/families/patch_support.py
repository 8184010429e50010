"""What both patches share: one correspondence resized per grid and device (once, not per
step), and the checks that the batch being sampled is the one it was built for."""
import threading

import comfy.patcher_extension

from ...kernels.corr_attention import attention_sources, packed_attention_plan
from ...kernels.correspondence import resize_correspondence


def model_family_name(model):
    """The host's name for the model's family (its model config class)."""
    config = getattr(model.model, "model_config", None)
    return type(config).__name__ if config is not None else type(getattr(model.model, "diffusion_model", model.model)).__name__


class CorrespondenceOnDevice:
    """A correspondence and its copies per (device, grid), made on first use and shared by clones."""

    def __init__(self, corr):
        self.corr = corr
        self._copies = {}
        self._lock = threading.RLock()

    def __deepcopy__(self, memo):
        return self

    def at(self, device, grid):
        """The correspondence on `grid` (h, w), on `device`."""
        return self._cached(("corr", device, grid[0], grid[1]),
                            lambda: resize_correspondence(self.corr, (grid[0], grid[1])).to(device))

    def attention_sources(self, device, grid, chunks):
        """`kernels.corr_attention.attention_sources` for this grid and chunk count, on `device`."""
        return self._cached(("sources", device, grid[0], grid[1], chunks),
                            lambda: attention_sources(self.at(device, grid), chunks, device))

    def packed_attention_plan(self, device, grid, chunks):
        """`kernels.corr_attention.packed_attention_plan` for this grid and chunk count, on `device`."""
        return self._cached(("packed", device, grid[0], grid[1], chunks),
                            lambda: packed_attention_plan(self.at(device, grid), chunks, device))

    def _cached(self, key, make):
        value = self._copies.get(key)
        if value is None:
            with self._lock:
                value = self._copies.get(key)
                if value is None:
                    value = self._copies[key] = make()
        return value


def check_batch_rows(node, corr, rows, extra_options, latent_ndim=4):
    """Raise a clear error when a model call's `rows` are not chunks of the correspondence's batch."""
    chunks = len(extra_options.get("cond_or_uncond", [0]))
    batch = rows // chunks if rows % chunks == 0 else None
    if batch != corr.batch_size:
        # The likely cause with a 5-D latent: the host's VAEEncode made one video latent of the photos.
        video = (" A video VAE (Qwen-Image's, Wan 2.1) encodes a batch given to VAEEncode as one video: encode "
                 "the photos with Edicho Encode Photos.") if latent_ndim == 5 else ""
        raise ValueError(
            f"{node}: the sampler runs a batch of {rows // max(chunks, 1)} latents but the correspondence was built "
            f"for {corr.batch_size} images. Sample the same image batch that went into Edicho Matcher (one latent per "
            f"photo).{video}")


def latent_ratio(family):
    """Image pixels per latent cell of the family's VAE (`LATENT_RATIO`; 8 unless the family says otherwise)."""
    return getattr(family, "LATENT_RATIO", 8)


def expected_latent_grid(corr, ratio):
    """The latent grid `(h, w)` the family samples for the correspondence's images."""
    # The matcher's grid is the 8 px latent of the extractor's SD VAE: that one is the correspondence's own.
    if ratio == 8:
        return tuple(corr.grid)
    return corr.image_size[0] // ratio, corr.image_size[1] // ratio


def check_image_size(node, corr, ratio, family_name):
    """The correspondence's images must tile the family's latent cells exactly (no cropped border to misalign)."""
    height, width = corr.image_size
    if height % ratio or width % ratio:
        raise ValueError(
            f"{node}: {family_name} encodes {ratio}x{ratio} px per latent cell, but the correspondence was built from "
            f"{width}x{height} px images. Make the photos' sides multiples of {ratio} (Edicho Batch Images with "
            f"multiple {ratio}) and rebuild the correspondence from them.")


def check_grid(node, corr, latent_grid, ratio=8):
    expected = expected_latent_grid(corr, ratio)
    if tuple(latent_grid) != expected:
        raise ValueError(
            f"{node}: the correspondence was built for a {expected[1]}x{expected[0]} latent "
            f"({corr.image_size[1]}x{corr.image_size[0]} px images) but the sampler runs "
            f"{latent_grid[1]}x{latent_grid[0]}. Rebuild it from the images at the size you sample.")


class SamplingCheck:
    """APPLY_MODEL wrapper: the sampled batch and latent must be the correspondence's, on every model call.

    On every call, not only inside the patch's step range: a wrong batch or size is then reported at the
    first call of the sampling run, before a step has been spent on it.
    """

    def __init__(self, corr, node, ratio=8, check_latent=None):
        self.corr = corr
        self.node = node
        self.ratio = ratio
        self.check_latent = check_latent

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        check_batch_rows(self.node, self.corr, x.shape[0], transformer_options, x.ndim)
        check_grid(self.node, self.corr, x.shape[-2:], self.ratio)
        if self.check_latent is not None:
            self.check_latent(x, self.node)
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)


def add_sampling_check(patched, corr, node, family):
    """Check `corr`'s image size for the family now, and each model call of `patched` (a clone) against it, with
    the family's own latent check if it has one."""
    ratio = latent_ratio(family)
    if ratio != 8:
        check_image_size(node, corr, ratio, model_family_name(patched))
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, f"edicho_sampling_check_{node}",
                                 SamplingCheck(corr, node, ratio, getattr(family, "check_latent", None)))


def check_images(node, corr, images):
    """The image batch must be the one the correspondence was built from (count and size)."""
    if images.shape[0] != corr.batch_size or tuple(images.shape[1:3]) != tuple(corr.image_size):
        raise ValueError(
            f"{node}: got {images.shape[0]} images of {images.shape[2]}x{images.shape[1]} but the correspondence "
            f"was built for {corr.batch_size} images of {corr.image_size[1]}x{corr.image_size[0]}. Connect the "
            f"same image batch that went into Edicho Feature Extractor.")
