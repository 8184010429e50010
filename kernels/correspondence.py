"""The correspondence record and its resizing between grids."""
from dataclasses import dataclass, replace

import torch
from einops import rearrange


@dataclass(frozen=True)
class Correspondence:
    """Reference -> target matches on one grid: for image b and target cell p (row-major
    p = y * w + x), `index[b, p]` is the matched reference cell, used where `valid[b, p]`.
    Shapes: index, valid, similarity `[B, h*w]`. The reference row is never valid."""
    index: torch.Tensor
    valid: torch.Tensor
    similarity: torch.Tensor
    grid: tuple[int, int]
    reference: int
    image_size: tuple[int, int]

    def __post_init__(self):
        n = self.grid[0] * self.grid[1]
        for name in ("index", "valid", "similarity"):
            tensor = getattr(self, name)
            if tensor.ndim != 2 or tensor.shape[1] != n or tensor.shape[0] != self.index.shape[0]:
                raise ValueError(f"Correspondence.{name} must be [B, {n}] for grid {self.grid}, got {list(tensor.shape)}")
        if self.index.dtype != torch.long or self.valid.dtype != torch.bool:
            raise ValueError(f"Correspondence.index must be int64 and valid bool, got {self.index.dtype} and "
                             f"{self.valid.dtype}")
        if not 0 <= self.reference < self.index.shape[0]:
            raise ValueError(f"Correspondence.reference {self.reference} is out of range for {self.index.shape[0]} images")

    @property
    def batch_size(self):
        """B, the number of images (reference included)."""
        return self.index.shape[0]

    def to(self, device):
        """The same correspondence with its tensors on `device`."""
        return replace(self, index=self.index.to(device), valid=self.valid.to(device),
                       similarity=self.similarity.to(device))

    @classmethod
    def identity(cls, batch, grid, reference, image_size):
        """Every target cell matched to the same cell of the reference, all valid but the reference row."""
        n = grid[0] * grid[1]
        valid = torch.ones(batch, n, dtype=torch.bool)
        valid[reference] = False
        return cls(torch.arange(n).expand(batch, n).clone(), valid, torch.ones(batch, n), tuple(grid), reference,
                   tuple(image_size))


def _centres(size, device):
    """Cell centres of a 1-D grid of `size` cells, in [0, 1]."""
    return (torch.arange(size, device=device, dtype=torch.float64) + 0.5) / size


def resize_correspondence(corr, grid):
    """`corr` on another grid `(h, w)`, coarser or finer, any aspect: index, valid, similarity `[B, h*w]`.

    Features are resized bilinearly and normalised before matching; a finished correspondence
    is resized by nearest cell centres, as a flow: each new target cell takes the old cell under
    its centre (its validity and similarity too) and that cell's displacement (matched reference
    centre minus own centre, in image-relative units), and points to the new reference cell
    containing its own centre plus that displacement. Mapping the matched reference centre
    itself (without the displacement) would snap every upsampled match to one sub-cell and break
    the identity; this way the identity stays the identity on every grid, and a translation by
    whole cells of the coarser grid round-trips exactly (down then up by an integer scale).
    The same grid returns `corr` itself.
    """
    grid = tuple(int(g) for g in grid)
    if len(grid) != 2 or min(grid) < 1:
        raise ValueError(f"resize_correspondence: grid must be two positive sizes (h, w), got {grid}")
    if grid == tuple(corr.grid):
        return corr
    (sh, sw), (dh, dw) = corr.grid, grid
    device = corr.index.device
    ty, tx = _centres(dh, device), _centres(dw, device)
    old_y = (ty * sh).floor().long().clamp_(0, sh - 1)
    old_x = (tx * sw).floor().long().clamp_(0, sw - 1)
    pick = rearrange(old_y[:, None] * sw + old_x[None, :], "h w -> (h w)")
    matched = corr.index[:, pick]
    shift_y = (torch.div(matched, sw, rounding_mode="floor") - old_y.repeat_interleave(dw)) / sh
    shift_x = (matched % sw - old_x.repeat(dh)) / sw
    new_y = ((ty.repeat_interleave(dw) + shift_y) * dh).floor().long().clamp_(0, dh - 1)
    new_x = ((tx.repeat(dh) + shift_x) * dw).floor().long().clamp_(0, dw - 1)
    return replace(corr, index=new_y * dw + new_x, valid=corr.valid[:, pick], similarity=corr.similarity[:, pick],
                   grid=grid)
