"""EdichoCorrespondencePreview: what the edit will agree on, as a picture."""
import torch
from comfy_api.latest import io

from ..kernels.correspondence import resize_correspondence
from ..kernels.warping import warp_images
from .families import check_images
from .types import CorrespondenceType

NODE = "EdichoCorrespondencePreview"
INVALID_TINT = torch.tensor([1.0, 0.0, 1.0])


def render_preview(images, corr):
    """IMAGE [B, H, W, 3] -> [B, H, 2W, 3]: each image beside the reference warped onto it; unmatched areas tinted magenta."""
    pixels = images[..., :3].movedim(-1, 1)
    warped = warp_images(pixels, corr).movedim(1, -1)
    valid = resize_correspondence(corr, tuple(images.shape[1:3])).valid.reshape(images.shape[:3])
    invalid = ~valid
    invalid[corr.reference] = False
    tint = INVALID_TINT.to(images)
    warped = torch.where(invalid[..., None], 0.5 * warped + 0.5 * tint, warped)
    return torch.cat([images[..., :3], warped], dim=2)


class EdichoCorrespondencePreview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE,
            display_name="Edicho Correspondence Preview",
            category="edicho/correspondence",
            description="Each image (left) beside the reference warped onto it through the correspondence (right); "
                        "magenta = no valid match, the image keeps its own content there. If the right half looks "
                        "like the left, the edit will be consistent.",
            inputs=[
                io.Image.Input("images", tooltip="The same image batch the correspondence was built from."),
                CorrespondenceType.Input("correspondence", tooltip="From Edicho Matcher."),
            ],
            outputs=[io.Image.Output(display_name="preview")],
        )

    @classmethod
    def execute(cls, images, correspondence) -> io.NodeOutput:
        check_images(NODE, correspondence, images)
        return io.NodeOutput(render_preview(images, correspondence))
