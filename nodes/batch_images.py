"""EdichoBatchImages / EdichoRestoreImages: photos of any sizes in, one batch for the model, each
photo back at its own size out."""
from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ..kernels.layout import FITS, common_size, group_indices, place, unplace

BATCH_NODE = "EdichoBatchImages"
RESTORE_NODE = "EdichoRestoreImages"
MAX_PHOTOS = 8
ALL_GROUPS = -1
GROUP_SIZE = 8
LOAD_IMAGE_NO_MASK = (64, 64)  # what core Load Image outputs as MASK for a photo with no alpha
Layout = io.Custom("EDICHO_LAYOUT")


@dataclass(frozen=True)
class BatchLayout:
    """Where each photo went on the common canvas, and the photos and masks as they came in."""
    size: tuple
    boxes: tuple
    originals: tuple  # IMAGE [1, h, w, C] each
    masks: tuple  # MASK [h, w] each, or None where none was given
    # In groups after the first, photo 0 is the reference carried along for consistency; it is
    # restored from the first group only.
    carries_reference: bool = False


def batch_photos(photos, masks, megapixels, multiple, fit, carries_reference=False):
    """Photos `[1, h, w, C]` (and masks `[h, w]` or None) -> IMAGE `[B, H, W, C]`, MASK `[B, H, W]`, BatchLayout."""
    size = common_size(tuple(photos[0].shape[1:3]), megapixels, multiple)
    images, placed_masks, boxes = [], [], []
    for photo, mask in zip(photos, masks):
        canvas, box = place(photo[0].movedim(-1, 0), size, fit)
        full = torch.ones(photo.shape[1:3]) if mask is None else mask
        placed_mask, _ = place(full[None].float(), size, fit)
        images.append(canvas.movedim(0, -1))
        placed_masks.append(placed_mask[0])
        boxes.append(box)
    layout = BatchLayout(size, tuple(boxes), tuple(photos), tuple(masks), carries_reference)
    return torch.stack(images), torch.stack(placed_masks), layout


def batch_groups(photos, masks, megapixels, multiple, fit, group_size, only_group=ALL_GROUPS):
    """Like `batch_photos`, split into groups that each start with the reference: lists of (images, masks, layout)."""
    groups = group_indices(len(photos), group_size)
    if only_group != ALL_GROUPS:
        if not 0 <= only_group < len(groups):
            raise ValueError(f"{BATCH_NODE}: only_group is {only_group} but {len(photos)} photos in groups of "
                             f"{group_size} make {len(groups)} groups (0..{len(groups) - 1}). Use -1 for all of them.")
        groups = [groups[only_group]]
    batches = [batch_photos([photos[i] for i in group], [masks[i] for i in group], megapixels, multiple, fit,
                            carries_reference=group[1] != 1) for group in groups]
    return tuple(list(column) for column in zip(*batches))


def restore_photos(images, layout, paste, edit_masks=None):
    """Edited IMAGE `[B, H, W, C]` -> one IMAGE `[1, h, w, C]` per photo at its original size.

    With `paste`, only the photo's mask takes the edit: `edit_masks` `[B, H, W]` on the canvas when
    given, else the mask the photo came with, else all of it. The rest, and anything the canvas
    cropped away, is the untouched original.
    """
    restored = []
    for index, (edited, box, original, mask) in enumerate(zip(images, layout.boxes, layout.originals, layout.masks)):
        if index == 0 and layout.carries_reference:
            continue
        size = tuple(original.shape[1:3])
        photo, covered = unplace(edited.movedim(-1, 0), box, size)
        photo = photo.movedim(0, -1)
        if edit_masks is not None:
            mask = unplace(edit_masks[index][None].float(), box, size)[0][0]
        keep_edit = covered if mask is None else covered & (mask.to(covered.device) > 0.5)
        if paste:
            photo = torch.where(keep_edit[..., None], photo, original[0].to(photo))
        restored.append(photo[None].clamp(0, 1))
    return restored


PHOTO_NAMES = tuple(f"image_{i}" for i in range(1, MAX_PHOTOS + 1))
MASK_NAMES = tuple(f"mask_{i}" for i in range(1, MAX_PHOTOS + 1))
# Growing inputs (V3 Autogrow) where the host has them: one socket more each time the last one is connected.
Autogrow = getattr(io, "Autogrow", None)
PHOTO_GROUP, MASK_GROUP = "photos", "masks"
REFERENCE_TIP = "The reference photo, any size: every other photo is edited to match it."
PHOTO_TIP = "Photos of the group, any size; a batch counts as several photos."
MASK_TIP = "Optional mask of the photo with the same number (the region to edit); one per photo of a batch, or one for all."


def photo_and_mask_inputs():
    """image_1..image_8 and mask_1..mask_8: growing groups `photos` / `masks` where the host has Autogrow, else fixed."""
    if Autogrow is None:
        return [*(io.Image.Input(name, optional=i > 1, tooltip=REFERENCE_TIP if i == 0 else PHOTO_TIP)
                  for i, name in enumerate(PHOTO_NAMES)),
                *(io.Mask.Input(name, optional=True, tooltip=MASK_TIP) for name in MASK_NAMES)]
    # min 0 and optional: workflows saved with the fixed sockets send image_1.. at the top level, which a
    # required photos.image_1 would refuse; execute() checks that two photos came, by either name.
    photos = Autogrow.TemplateNames(io.Image.Input("image", tooltip=PHOTO_TIP), names=list(PHOTO_NAMES), min=0)
    masks = Autogrow.TemplateNames(io.Mask.Input("mask", tooltip=MASK_TIP), names=list(MASK_NAMES), min=0)
    return [Autogrow.Input(PHOTO_GROUP, optional=True, template=photos,
                           tooltip=f"{REFERENCE_TIP} Connect photos one after another (image_1 first): a new socket "
                                   f"appears as each is connected, up to {MAX_PHOTOS}."),
            Autogrow.Input(MASK_GROUP, optional=True, template=masks, tooltip=MASK_TIP)]


def named_photos(inputs):
    """The node's photo and mask inputs by name (image_i, mask_i), from growing groups or fixed sockets alike."""
    named = {}
    for name, value in inputs.items():
        if name in (PHOTO_GROUP, MASK_GROUP):
            named.update({key: item for key, item in (value or {}).items() if item is not None})
        elif value is not None:
            named[name] = value
    return named


class EdichoBatchImages(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=BATCH_NODE,
            display_name="Edicho Batch Images",
            category="edicho/images",
            description="Brings photos of different sizes and aspect ratios to one size for the model, as one "
                        "batch (with masks); Edicho Restore Images puts each back at its own size.",
            inputs=[*photo_and_mask_inputs(),
                    io.Float.Input("megapixels", default=0.26, min=0.01, max=16.0, step=0.01,
                                   tooltip="Pixels of the common size, in millions (0.26 = 512x512 for a square reference; 1.0 for SDXL)."),
                    io.Int.Input("multiple", default=64, min=8, max=256, step=8,
                                 tooltip="Both sides of the common size are multiples of this (64 suits SD latents and attention grids)."),
                    io.Combo.Input("fit", options=list(FITS), default="letterbox",
                                   tooltip="letterbox: each whole photo fits, padded with black. crop: each photo fills the frame, edges cut (restored from the original)."),
                    # Optional, so that workflows saved before groups existed still validate.
                    io.Int.Input("group_size", default=GROUP_SIZE, min=2, max=64, optional=True,
                                 tooltip="Most photos sampled at once. Larger groups are split into groups of this size that "
                                         "each start with the reference (same seed, same reference noise), run one after another."),
                    io.Int.Input("only_group", default=ALL_GROUPS, min=ALL_GROUPS, max=63, optional=True,
                                 tooltip="-1: every group. 0, 1, ...: just that group, to spread a large set over several "
                                         "ComfyUI instances (queue the same workflow on each with its own group).")],
            outputs=[io.Image.Output(display_name="images", is_output_list=True),
                     io.Mask.Output(display_name="masks", is_output_list=True),
                     Layout.Output(display_name="layout", is_output_list=True)],
        )

    @classmethod
    def execute(cls, megapixels, multiple, fit, group_size=GROUP_SIZE, only_group=ALL_GROUPS,
                **inputs) -> io.NodeOutput:
        named = named_photos(inputs)
        photos, masks = [], []
        for i in range(1, MAX_PHOTOS + 1):
            photo, mask = named.get(f"image_{i}"), named.get(f"mask_{i}")
            if photo is None:
                if mask is not None:
                    raise ValueError(f"{BATCH_NODE}: mask_{i} is connected but image_{i} is not. Connect the photo too.")
                continue
            if mask is not None:
                mask = mask.reshape(-1, *mask.shape[-2:])
                if tuple(mask.shape[-2:]) == LOAD_IMAGE_NO_MASK and not mask.any() \
                        and tuple(photo.shape[1:3]) != LOAD_IMAGE_NO_MASK:
                    raise ValueError(f"{BATCH_NODE}: mask_{i} is empty: Load Image gives an empty 64x64 mask when "
                                     f"nothing is painted on the photo. Paint the region to edit on image_{i} "
                                     f"(right-click > Open in MaskEditor), or disconnect mask_{i}.")
                if tuple(mask.shape[-2:]) != tuple(photo.shape[1:3]) or mask.shape[0] not in (1, photo.shape[0]):
                    raise ValueError(f"{BATCH_NODE}: mask_{i} is {mask.shape[0]} x {mask.shape[-1]}x{mask.shape[-2]} but "
                                     f"image_{i} is {photo.shape[0]} x {photo.shape[2]}x{photo.shape[1]}. Use the mask "
                                     f"drawn on that photo (one, or one per photo of the batch).")
            for index, single in enumerate(photo.split(1)):
                photos.append(single)
                masks.append(None if mask is None else mask[min(index, mask.shape[0] - 1)])
        if "image_1" not in named or len(photos) < 2:
            raise ValueError(f"{BATCH_NODE}: got {len(photos)} photo(s){'' if 'image_1' in named else ' and no image_1'}. "
                             f"Connect the reference to image_1 and at least one more photo (image_2, or a batch "
                             f"of several on image_1).")
        return io.NodeOutput(*batch_groups(photos, masks, megapixels, multiple, fit, group_size, only_group))


class EdichoRestoreImages(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=RESTORE_NODE,
            display_name="Edicho Restore Images",
            category="edicho/images",
            description="Each edited photo back at its original size and aspect (a list of images).",
            inputs=[
                io.Image.Input("images", tooltip="The edited batch, as sampled and decoded."),
                Layout.Input("layout", tooltip="From Edicho Batch Images."),
                io.Boolean.Input("paste", default=True,
                                 tooltip="Paste the edit into the untouched original: only the masked region (all of it without a mask) changes."),
                io.Mask.Input("masks", optional=True,
                              tooltip="Where each photo takes the edit when pasting, on the batch canvas (e.g. from Edicho "
                                      "Transfer Mask). Unconnected: the masks given to Edicho Batch Images."),
            ],
            outputs=[io.Image.Output(display_name="images", is_output_list=True)],
        )

    @classmethod
    def execute(cls, images, layout, paste, masks=None) -> io.NodeOutput:
        if images.shape[0] != len(layout.boxes) or tuple(images.shape[1:3]) != tuple(layout.size):
            raise ValueError(f"{RESTORE_NODE}: got {images.shape[0]} images of {images.shape[2]}x{images.shape[1]} "
                             f"but the layout is for {len(layout.boxes)} of {layout.size[1]}x{layout.size[0]}. Connect "
                             f"the batch that came from the same Edicho Batch Images.")
        if masks is not None and (masks.shape[0] != images.shape[0] or tuple(masks.shape[-2:]) != tuple(layout.size)):
            raise ValueError(f"{RESTORE_NODE}: masks are {masks.shape[0]} of {masks.shape[-1]}x{masks.shape[-2]} but the "
                             f"batch is {images.shape[0]} of {layout.size[1]}x{layout.size[0]}. Connect masks made on "
                             f"this batch (e.g. Edicho Transfer Mask).")
        return io.NodeOutput(restore_photos(images, layout, paste, masks))
