"""The README's correspondence picture, from the bundled sample photos.

    ./edicho python harness/readme_picture.py   # writes docs/correspondence-preview.png

No real checkpoint can be downloaded where this pack is developed, so DIFT can't be shown on
real weights. The three sample views are known crops and a mirror of one photo, so the true
correspondence between them is known exactly: the picture is Edicho Correspondence Preview's
rendering of that truth (what a good match looks like), beside the preview the tiny random-
weight smoke checkpoint gives (its features match nothing, so the mutual check rejects almost
every cell: magenta).
"""
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SIZE, GRID = 256, 32


def true_correspondence(Correspondence):
    """The exact reference -> view matches of the sample views on a GRID x GRID grid."""
    import sample_photos

    centres = (torch.arange(GRID) + 0.5) * SIZE / GRID
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    (_, (top_r, left_r, h_r, w_r), mirror_r) = sample_photos.VIEWS[0]
    index, valid = [], []
    for _, (top, left, h, w), mirror in sample_photos.VIEWS:
        photo_y = top + y * h / SIZE
        photo_x = left + (SIZE - x if mirror else x) * w / SIZE
        ref_y = (photo_y - top_r) * SIZE / h_r
        ref_x = (photo_x - left_r) * SIZE / w_r
        if mirror_r:
            ref_x = SIZE - ref_x
        cell_y, cell_x = (ref_y * GRID / SIZE).floor().long(), (ref_x * GRID / SIZE).floor().long()
        inside = (cell_y >= 0) & (cell_y < GRID) & (cell_x >= 0) & (cell_x < GRID)
        index.append((cell_y.clamp(0, GRID - 1) * GRID + cell_x.clamp(0, GRID - 1)).reshape(-1))
        valid.append(inside.reshape(-1))
    valid[0][:] = False
    index, valid = torch.stack(index), torch.stack(valid)
    return Correspondence(index, valid, valid.float(), (GRID, GRID), 0, (SIZE, SIZE))


def main():
    sys.path.insert(0, str(REPO / "harness"))
    import host
    import sample_photos
    import tiny_checkpoints

    booted = host.start_host(base_directory=tempfile.mkdtemp(prefix="edicho-picture-"))
    import importlib

    import comfy.sd
    from PIL import Image

    def pack(name):
        return importlib.import_module(f"{booted.pack_module.__name__}.{name}")

    images = sample_photos.sample_group(SIZE)
    truth = pack("nodes.preview").render_preview(images, true_correspondence(pack("kernels.correspondence").Correspondence))
    checkpoint = tiny_checkpoints.ensure_checkpoint("sd15", Path.home() / ".cache" / "comfyui-edicho" / "checkpoints")
    model, _, vae, *_ = comfy.sd.load_checkpoint_guess_config(str(checkpoint))
    fe = pack("nodes.feature_extractor")
    features, grid, level = fe.extract_features(model, vae, images, fe.empty_conditioning(model), 261, fe.AUTO, 8, 0)
    dift = pack("nodes.types").DiftFeatures(features, (SIZE, SIZE), grid, level, 261)
    random_weights = pack("nodes.preview").render_preview(images, pack("nodes.matcher").build_correspondence(dift, 0, True, 0.0, 512))
    # Rows: the two targets; columns: photo, reference warped through the truth, a gap, the smoke checkpoint's warp.
    gap = torch.ones(2, SIZE, 16, 3)
    picture = torch.cat([truth[1:], gap, random_weights[1:, :, SIZE:]], dim=2).flatten(0, 1)
    out = REPO / "docs" / "correspondence-preview.png"
    Image.fromarray((picture.clamp(0, 1) * 255).round().byte().numpy()).save(out)
    print(out)


if __name__ == "__main__":
    main()
