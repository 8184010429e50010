"""Photos of different sizes: batched to one size for the model and restored exactly to their own."""
import pytest
import torch

import runner
from comfyui_edicho.kernels.layout import common_size, place, unplace


def smooth_photo(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)[0]


@pytest.mark.parametrize("size, megapixels, expected", [((512, 512), 0.26, (512, 512)), ((300, 451), 0.26, (384, 640)),
                                                        ((1080, 720), 1.0, (1216, 832))])
def test_common_size_keeps_the_reference_aspect_in_multiples(size, megapixels, expected):
    assert common_size(size, megapixels, 64) == expected


@pytest.mark.parametrize("fit", ["letterbox", "crop"])
@pytest.mark.parametrize("h, w", [(300, 451), (451, 300), (200, 200)])
def test_place_and_unplace_round_trip(fit, h, w):
    photo = smooth_photo(h, w, seed=h + w)
    canvas, box = place(photo, (384, 640), fit)
    assert canvas.shape == (3, 384, 640)
    back, covered = unplace(canvas, box, (h, w))
    assert back.shape == (3, h, w) and covered.shape == (h, w)
    if fit == "letterbox":
        assert covered.all()
        # Outside the photo the letterbox is black.
        top, left, bh, bw = box
        assert canvas[:, :top].abs().sum() == 0 and canvas[:, :, :left].abs().sum() == 0
    inner = covered.clone()
    inner[:3] = inner[-3:] = False
    inner[:, :3] = inner[:, -3:] = False
    assert (back - photo)[:, inner].abs().max() < 0.03


def test_batch_and_restore_sizes_and_paste(pack):
    nodes = pack("nodes.batch_images")
    photos = [smooth_photo(300, 451, 1)[None].movedim(1, -1), smooth_photo(451, 300, 2)[None].movedim(1, -1),
              smooth_photo(256, 256, 3)[None].movedim(1, -1)]
    mask = torch.zeros(451, 300)
    mask[100:200, 50:150] = 1.0
    images, masks, layout = nodes.EdichoBatchImages.execute(photos[0], photos[1], 0.26, 64, "letterbox",
                                                            image_3=photos[2], mask_2=mask).result
    assert images.shape == (3, 384, 640, 3) and masks.shape == (3, 384, 640)
    assert masks[0].min() == 0 and masks[0].max() == 1  # letterbox bars are outside the mask
    edited = 1.0 - images
    restored = nodes.EdichoRestoreImages.execute(edited, layout, True).result[0]
    assert [tuple(r.shape) for r in restored] == [(1, 300, 451, 3), (1, 451, 300, 3), (1, 256, 256, 3)]
    outside = mask < 0.5
    assert torch.equal(restored[1][0][outside], photos[1][0][outside])
    assert not torch.equal(restored[1][0][~outside], photos[1][0][~outside])
    unpasted = nodes.EdichoRestoreImages.execute(edited, layout, False).result[0]
    assert (unpasted[0] - (1.0 - photos[0])).abs().max() < 0.05


@pytest.mark.parametrize("call, message", [
    (lambda n: n.EdichoBatchImages.execute(torch.rand(1, 64, 64, 3), torch.rand(1, 64, 96, 3), 0.26, 64, "crop",
                                           mask_2=torch.ones(64, 64)),
     "EdichoBatchImages: mask_2 is 64x64 but image_2 is 96x64"),
    (lambda n: n.EdichoBatchImages.execute(torch.rand(1, 64, 64, 3), torch.rand(1, 64, 96, 3), 0.26, 64, "crop",
                                           mask_3=torch.ones(64, 64)),
     "EdichoBatchImages: mask_3 is connected but image_3 is not"),
])
def test_bad_input_names_the_node_and_the_fix(pack, call, message):
    with pytest.raises(ValueError, match=message):
        call(pack("nodes.batch_images"))


def test_restore_refuses_a_batch_from_elsewhere(pack):
    nodes = pack("nodes.batch_images")
    _, _, layout = nodes.EdichoBatchImages.execute(torch.rand(1, 64, 64, 3), torch.rand(1, 64, 96, 3), 0.26, 64,
                                                   "crop").result
    with pytest.raises(ValueError, match="EdichoRestoreImages: got 3 images of 64x64 but the layout is for 2"):
        nodes.EdichoRestoreImages.execute(torch.rand(3, 64, 64, 3), layout, True)


def test_batch_and_restore_in_a_graph(host, sample_files):
    from PIL import Image

    wide = host.base_directory / "input" / "wide.png"
    Image.open(host.base_directory / "input" / sample_files[0]).resize((320, 192)).save(wide)
    graph = {
        "a": {"class_type": "LoadImage", "inputs": {"image": sample_files[0]}},
        "b": {"class_type": "LoadImage", "inputs": {"image": "wide.png"}},
        "batch": {"class_type": "EdichoBatchImages", "inputs": {"image_1": ["a", 0], "image_2": ["b", 0],
                                                                "megapixels": 0.07, "multiple": 64, "fit": "letterbox"}},
        "invert": {"class_type": "ImageInvert", "inputs": {"image": ["batch", 0]}},
        "restore": {"class_type": "EdichoRestoreImages", "inputs": {"images": ["invert", 0], "layout": ["batch", 2],
                                                                    "paste": True}},
        "out": {"class_type": "PreviewImage", "inputs": {"images": ["restore", 0]}},
    }
    result = runner.run_graph(graph)
    assert tuple(result.output("batch").shape) == (2, 256, 256, 3)
    assert [tuple(i.shape) for i in result.outputs["restore"][0]] == [(1, 256, 256, 3), (1, 192, 320, 3)]
    assert len(result.ui["out"]["images"]) == 2
    wide.unlink()
