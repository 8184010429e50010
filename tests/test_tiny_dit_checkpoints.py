"""The tiny DiT-family files (SD3.5 Medium, Qwen-Image, the Wan 2.1 VAE) are what the host's own
UNETLoader / VAELoader detect them as, and run through the host's sampler and VAE."""
import pytest
import torch

import tiny_checkpoints


def _load_diffusion_model(tiny_checkpoint, family):
    import comfy.sd
    import folder_paths

    return comfy.sd.load_diffusion_model(folder_paths.get_full_path("diffusion_models", tiny_checkpoint(family, "diffusion_models")))


def _assert_detected(model, family):
    import comfy.model_sampling

    assert type(model.model.model_config).__name__ == tiny_checkpoints.FAMILIES[family]["expected_model_type"]
    assert comfy.model_sampling.CONST in type(model.model.model_sampling).__mro__


def test_sd35_medium_is_detected_as_sd3_and_samples(host, tiny_checkpoint):
    import comfy.sample

    model = _load_diffusion_model(tiny_checkpoint, "sd35-medium")
    _assert_detected(model, "sd35-medium")
    dm = model.model.diffusion_model
    assert [block.x_block.x_block_self_attn for block in dm.joint_blocks] == [True, False]
    assert dm.context_embedder.in_features == 768 and dm.y_embedder.mlp[0].in_features == 768

    torch.manual_seed(0)
    latent = torch.zeros(3, 16, 12, 16)
    noise = torch.randn(latent.shape)
    positive = [[torch.randn(1, 7, 768), {"pooled_output": torch.randn(1, 768)}]]
    negative = [[torch.randn(1, 7, 768), {"pooled_output": torch.randn(1, 768)}]]
    out = comfy.sample.sample(model, noise, 2, 2.0, "euler", "simple", positive, negative, latent)
    assert out.shape == latent.shape
    assert torch.isfinite(out).all()


def test_wan21_vae_encodes_and_decodes_an_image_batch(host, tiny_checkpoint):
    import comfy.sd
    import comfy.utils
    import folder_paths

    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(folder_paths.get_full_path("vae", tiny_checkpoint("wan21-vae", "vae"))))
    assert vae.latent_channels == 16 and vae.latent_dim == 3
    images = torch.rand(2, 96, 128, 3)
    # The host reads a [B, H, W, C] batch as the frames of one video (and crops every axis between
    # batch and channels to the 8x grid, so a [B, 1, H, W, C] batch of one-frame videos is cropped
    # to no frame): two frames make one latent frame, from the first. Images are encoded one at a
    # time, as the host's Qwen-Image edit nodes do.
    assert vae.encode(images).shape == (1, 16, 1, 12, 16)
    latent = torch.cat([vae.encode(image[None]) for image in images])
    assert latent.shape == (2, 16, 1, 12, 16)
    assert torch.isfinite(latent).all()
    decoded = vae.decode(latent)
    assert decoded.shape == (2, 1, 96, 128, 3)  # [B, T, H, W, C]: both hosts keep the frame axis
    assert torch.isfinite(decoded).all()


@pytest.mark.slow
def test_qwen_image_is_detected_and_samples_one_step(host, tiny_checkpoint):
    import comfy.sample

    model = _load_diffusion_model(tiny_checkpoint, "qwen-image")
    _assert_detected(model, "qwen-image")
    assert len(model.model.diffusion_model.transformer_blocks) == 1

    torch.manual_seed(0)
    latent = torch.zeros(1, 16, 1, 8, 8)
    positive = [[torch.randn(1, 5, 3584), {}]]
    # cfg 1: the host runs the positive only.
    out = comfy.sample.sample(model, torch.randn(latent.shape), 1, 1.0, "euler", "simple", positive, positive, latent)
    assert out.shape == latent.shape
    assert torch.isfinite(out).all()
