"""Bundled sample photos: scikit-image's photo of Chelsea the cat, turned into a small group
of the same subject under different crops, scales and a flip (what Edicho is for), and its
coffee cup as the exemplar object of the Paint-by-Example workflow."""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# (top, left, height, width) crops of the 300x451 photo, and whether to mirror it.
VIEWS = (
    ("chelsea-a", (15, 70, 280, 280), False),
    ("chelsea-b", (0, 130, 300, 300), True),
    ("chelsea-c", (60, 125, 200, 200), False),
)


def sample_group(size=256):
    """Three views of one subject as a ComfyUI IMAGE batch `[3, size, size, 3]` in [0, 1]."""
    from skimage import data

    photo = torch.from_numpy(np.ascontiguousarray(data.chelsea())).float().div(255).permute(2, 0, 1)
    views = []
    for _, (top, left, h, w), mirror in VIEWS:
        crop = photo[:, top:top + h, left:left + w]
        if mirror:
            crop = crop.flip(-1)
        views.append(F.interpolate(crop[None], size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0])
    return torch.stack(views).clamp(0, 1).permute(0, 2, 3, 1).contiguous()


# (top, left, bottom, right) fractions of the reference painted as the region to edit: the cat's head.
MASK_BOX = (0.12, 0.3, 0.55, 0.75)


def write_sample_group(folder, size=256, masked_reference=False):
    """Save the group as PNGs in `folder` (e.g. the host's input/); return their file names.

    With `masked_reference`, the reference is saved with the region to edit painted out of its
    alpha, as the editor's mask painter does, so LoadImage gives that region as its MASK.
    """
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index, ((name, _, _), image) in enumerate(zip(VIEWS, sample_group(size))):
        pixels = (image.numpy() * 255).round().astype(np.uint8)
        file_name = f"{name}-{size}.png"
        if masked_reference and index == 0:
            alpha = np.full(pixels.shape[:2], 255, np.uint8)
            top, left, bottom, right = (round(f * size) for f in MASK_BOX)
            alpha[top:bottom, left:right] = 0
            pixels = np.dstack([pixels, alpha])
            file_name = f"{name}-{size}-masked.png"
        Image.fromarray(pixels).save(folder / file_name)
        names.append(file_name)
    return names


# (top, left, height, width) of the cup in scikit-image's 400x600 coffee photo.
EXEMPLAR_CROP = (40, 170, 300, 300)


def write_exemplar(folder, size=256):
    """Save the exemplar object (a coffee cup) as a `size` x `size` PNG in `folder`; return its file name."""
    from PIL import Image
    from skimage import data

    top, left, h, w = EXEMPLAR_CROP
    photo = torch.from_numpy(np.ascontiguousarray(data.coffee()[top:top + h, left:left + w])).float().div(255)
    image = F.interpolate(photo.permute(2, 0, 1)[None], size=(size, size), mode="bicubic", antialias=True,
                          align_corners=False)[0].clamp(0, 1).permute(1, 2, 0)
    file_name = f"coffee-exemplar-{size}.png"
    Path(folder).mkdir(parents=True, exist_ok=True)
    Image.fromarray((image.numpy() * 255).round().astype(np.uint8)).save(Path(folder) / file_name)
    return file_name
