"""EdichoEncodePhotos: one latent per photo of a batch, also with video VAEs (Wan 2.1, the Qwen-Image
VAE), which the host's VAEEncode hands a whole image batch as the frames of one video."""
import comfy.model_management
import comfy.utils
import torch
from comfy_api.latest import io

NODE = "EdichoEncodePhotos"


def encode_each(vae, images):
    """IMAGE `[B, H, W, C]` -> latent `[B, ...]`: each photo encoded on its own, in order."""
    progress = comfy.utils.ProgressBar(images.shape[0])
    latents = []
    for index in range(images.shape[0]):
        comfy.model_management.throw_exception_if_processing_interrupted()
        latents.append(vae.encode(images[index:index + 1, :, :, :3]))
        progress.update(1)
    return torch.cat(latents)


class EdichoEncodePhotos(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE,
            display_name="Edicho Encode Photos (one latent each)",
            category="edicho/images",
            description="VAE-encodes every photo of a batch on its own: a batch of latents, one per photo. With an "
                        "image VAE (SD, SDXL, Flux) this is what VAEEncode gives; with a video VAE (Qwen-Image's, Wan "
                        "2.1) VAEEncode reads the batch as one video's frames, this node does not. For Qwen-Image-Edit "
                        "and the edit references of ReferenceLatent.",
            inputs=[
                io.Image.Input("images", tooltip="The photos, e.g. from Edicho Batch Images."),
                io.Vae.Input("vae", tooltip="The VAE of the model that samples the photos."),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, images, vae) -> io.NodeOutput:
        return io.NodeOutput({"samples": encode_each(vae, images)})
