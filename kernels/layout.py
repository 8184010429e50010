"""Placing photos of different sizes on one canvas size for batching, and taking them back."""
import math

import kornia
import torch

FITS = ("letterbox", "crop")


def common_size(reference_size, megapixels, multiple=64):
    """Canvas (H, W) with the reference's aspect, about `megapixels` * 1e6 pixels, sides multiples of `multiple`."""
    h, w = reference_size
    if min(h, w) < 1 or megapixels <= 0 or multiple < 1:
        raise ValueError(f"common_size: need a positive size, megapixels and multiple, got {reference_size}, "
                         f"{megapixels}, {multiple}")
    scale = math.sqrt(megapixels * 1e6 / (h * w))
    return (max(multiple, round(h * scale / multiple) * multiple), max(multiple, round(w * scale / multiple) * multiple))


def place(image, size, fit):
    """`[C, h, w]` -> (`[C, H, W]` canvas, box (top, left, height, width) of the scaled photo on it).

    letterbox: the whole photo fits, the rest is 0; crop: the photo covers the canvas, centred.
    """
    if fit not in FITS:
        raise ValueError(f"place: fit must be one of {FITS}, got {fit!r}")
    channels, h, w = image.shape
    height, width = size
    scale = (min if fit == "letterbox" else max)(height / h, width / w)
    box_h, box_w = max(1, round(h * scale)), max(1, round(w * scale))
    scaled = kornia.geometry.transform.resize(image[None], (box_h, box_w), interpolation="bilinear", antialias=True)[0]
    top, left = (height - box_h) // 2, (width - box_w) // 2
    canvas = image.new_zeros(channels, height, width)
    canvas[:, max(top, 0):top + box_h, max(left, 0):left + box_w] = \
        scaled[:, max(-top, 0):max(-top, 0) + min(height, box_h), max(-left, 0):max(-left, 0) + min(width, box_w)]
    return canvas, (top, left, box_h, box_w)


def unplace(canvas, box, original_size):
    """`[C, H, W]` canvas -> (`[C, h, w]` photo at its original size, `[h, w]` bool: fully covered by the canvas)."""
    channels, height, width = canvas.shape
    top, left, box_h, box_w = box
    content = canvas.new_zeros(channels, box_h, box_w)
    covered = canvas.new_zeros(1, box_h, box_w)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + box_h, height), min(left + box_w, width)
    content[:, y0 - top:y1 - top, x0 - left:x1 - left] = canvas[:, y0:y1, x0:x1]
    covered[:, y0 - top:y1 - top, x0 - left:x1 - left] = 1
    photo = kornia.geometry.transform.resize(content[None], tuple(original_size), interpolation="bilinear",
                                             antialias=True)[0]
    # Resampled the same way, so pixels that blend in anything from outside the canvas are not "covered".
    mask = kornia.geometry.transform.resize(covered[None], tuple(original_size), interpolation="bilinear",
                                            antialias=True)[0, 0] > 0.999
    return photo, mask


def group_indices(count, group_size):
    """Photo indices per group for `count` photos, photo 0 (the reference) first in every group.

    One group when everything fits; otherwise each group is the reference plus the next
    `group_size - 1` photos, so every group is edited against the same reference.
    """
    if count < 2 or group_size < 2:
        raise ValueError(f"group_indices: need at least 2 photos and groups of at least 2, got {count}, {group_size}")
    others = list(range(1, count))
    step = group_size - 1
    return [[0, *others[start:start + step]] for start in range(0, len(others), step)]
