"""EdichoTransferPoints: carry a mask drawn once on the reference onto every photo."""
import torch
from comfy_api.latest import io

from ..kernels.warping import warp_images
from .types import CorrespondenceType

NODE = "EdichoTransferPoints"


def transfer_mask(mask, corr):
    """MASK of the reference [H, W] or [1, H, W], or the batch's [B, H, W] -> MASK [B, H, W]: the reference's, warped onto each target."""
    mask = mask.reshape(-1, *mask.shape[-2:])
    if mask.shape[0] == corr.batch_size:
        mask = mask[corr.reference:corr.reference + 1]
    if mask.shape[0] != 1:
        raise ValueError(f"{NODE}: expected one mask drawn on the reference (or one per image, of which the "
                         f"reference's is used), got {mask.shape[0]} for {corr.batch_size} images.")
    planes = torch.zeros(corr.batch_size, 1, *mask.shape[-2:], dtype=torch.float32, device=mask.device)
    planes[corr.reference, 0] = mask[0].float()
    return warp_images(planes, corr)[:, 0]


class EdichoTransferPoints(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE,
            display_name="Edicho Transfer Mask",
            category="edicho/correspondence",
            description="Carries a mask drawn on the reference onto every image through the correspondence, e.g. "
                        "to inpaint the same region of all photos. Unmatched areas get 0.",
            inputs=[
                CorrespondenceType.Input("correspondence", tooltip="From Edicho Matcher."),
                io.Mask.Input("mask", tooltip="Mask drawn on the reference image, at the images' size; or the masks output "
                                              "of Edicho Batch Images, of which the reference's is used."),
                io.Int.Input("grow", default=0, min=0, max=256,
                             tooltip="Dilate the carried masks by this many pixels, to close small gaps left by unmatched cells."),
            ],
            outputs=[io.Mask.Output(display_name="masks")],
        )

    @classmethod
    def execute(cls, correspondence, mask, grow) -> io.NodeOutput:
        if tuple(mask.shape[-2:]) != tuple(correspondence.image_size):
            raise ValueError(f"{NODE}: the mask is {mask.shape[-1]}x{mask.shape[-2]} but the correspondence was built "
                             f"for {correspondence.image_size[1]}x{correspondence.image_size[0]} images. Draw the mask "
                             f"on the reference image as it went into the matcher.")
        masks = transfer_mask(mask, correspondence)
        if grow > 0:
            # Max-pooling is a binary dilation for masks in [0, 1].
            masks = torch.nn.functional.max_pool2d(masks[:, None], 2 * grow + 1, stride=1, padding=grow)[:, 0]
        return io.NodeOutput(masks)
