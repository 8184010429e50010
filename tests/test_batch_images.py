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


def batch_images(nodes, image_1, image_2, megapixels, multiple, fit, **more):
    """EdichoBatchImages as the host calls it: every input by name."""
    return nodes.EdichoBatchImages.execute(image_1=image_1, image_2=image_2, megapixels=megapixels, multiple=multiple,
                                           fit=fit, **more)


def test_batch_and_restore_sizes_and_paste(pack):
    nodes = pack("nodes.batch_images")
    photos = [smooth_photo(300, 451, 1)[None].movedim(1, -1), smooth_photo(451, 300, 2)[None].movedim(1, -1),
              smooth_photo(256, 256, 3)[None].movedim(1, -1)]
    mask = torch.zeros(451, 300)
    mask[100:200, 50:150] = 1.0
    images, masks, layout = (single for (single,) in batch_images(
        nodes, photos[0], photos[1], 0.26, 64, "letterbox", image_3=photos[2], mask_2=mask).result)
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
    (lambda n: batch_images(n, torch.rand(1, 64, 64, 3), torch.rand(1, 64, 96, 3), 0.26, 64, "crop",
                                           mask_2=torch.ones(64, 64)),
     "EdichoBatchImages: mask_2 is 1 x 64x64 but image_2 is 1 x 96x64"),
    (lambda n: batch_images(n, torch.rand(1, 64, 64, 3), torch.rand(1, 64, 96, 3), 0.26, 64, "crop",
                                           mask_3=torch.ones(64, 64)),
     "EdichoBatchImages: mask_3 is connected but image_3 is not"),
    (lambda n: batch_images(n, torch.rand(1, 96, 96, 3), torch.rand(1, 64, 96, 3), 0.26, 64, "crop",
                                           mask_1=torch.zeros(1, 64, 64)),
     r"EdichoBatchImages: mask_1 is empty: Load Image gives an empty 64x64 mask when nothing is painted.*MaskEditor"),
    (lambda n: n.EdichoBatchImages.execute(photos={"image_1": torch.rand(1, 64, 64, 3)}, megapixels=0.26, multiple=64,
                                           fit="crop"),
     r"EdichoBatchImages: got 1 photo\(s\)\. Connect the reference to image_1 and at least one more"),
    (lambda n: n.EdichoBatchImages.execute(photos={"image_2": torch.rand(2, 64, 64, 3)}, megapixels=0.26, multiple=64,
                                           fit="crop"),
     r"EdichoBatchImages: got 2 photo\(s\) and no image_1\. Connect the reference to image_1"),
])
def test_bad_input_names_the_node_and_the_fix(pack, call, message):
    with pytest.raises(ValueError, match=message):
        call(pack("nodes.batch_images"))


def test_restore_refuses_a_batch_from_elsewhere(pack):
    nodes = pack("nodes.batch_images")
    (_,), (_,), (layout,) = batch_images(nodes, torch.rand(1, 64, 64, 3), torch.rand(1, 64, 96, 3), 0.26,
                                                            64, "crop").result
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
    assert len(result.outputs["batch"][0]) == 1
    assert [tuple(i.shape) for i in result.outputs["restore"][0]] == [(1, 256, 256, 3), (1, 192, 320, 3)]
    assert len(result.ui["out"]["images"]) == 2
    wide.unlink()


@pytest.mark.parametrize("count, group_size, expected", [
    (3, 8, [[0, 1, 2]]),
    (8, 8, [[0, 1, 2, 3, 4, 5, 6, 7]]),
    (9, 8, [[0, 1, 2, 3, 4, 5, 6, 7], [0, 8]]),
    (10, 4, [[0, 1, 2, 3], [0, 4, 5, 6], [0, 7, 8, 9]]),
    (5, 2, [[0, 1], [0, 2], [0, 3], [0, 4]]),
])
def test_groups_each_start_with_the_reference_and_cover_every_photo_once(count, group_size, expected):
    from comfyui_edicho.kernels.layout import group_indices

    groups = group_indices(count, group_size)
    assert groups == expected
    assert sorted(i for g in groups for i in g[1:]) == list(range(1, count))


def _ten_photos():
    return [smooth_photo(200 + 16 * i, 300 - 8 * i, seed=i)[None].movedim(1, -1) for i in range(10)]


def test_large_group_splits_and_restores_each_photo_once_in_order(pack):
    nodes = pack("nodes.batch_images")
    photos = _ten_photos()
    # Eight sockets; a batch on one socket counts as several photos (here 3 same-size copies).
    same = torch.cat([photos[7]] * 3)
    inputs = {f"image_{i + 1}": photos[i] for i in range(2, 7)} | {"image_8": same}
    images, masks, layouts = batch_images(nodes, photos[0], photos[1], 0.05, 64, "letterbox",
                                                             group_size=4, **inputs).result
    assert [b.shape[0] for b in images] == [4, 4, 4]
    for batch in images:
        assert torch.equal(batch[0], images[0][0])  # the reference leads every group
    edited = [1.0 - b for b in images]
    restored = [photo for batch, layout in zip(edited, layouts)
                for photo in nodes.EdichoRestoreImages.execute(batch, layout, True).result[0]]
    expected = photos[:7] + [photos[7]] * 3
    assert [tuple(r.shape) for r in restored] == [tuple(p.shape) for p in expected]
    # Restored means edited: each is the inverted original (up to resampling), in input order.
    assert all((r - (1.0 - p)).abs().mean() < 0.02 for r, p in zip(restored, expected))


def test_only_group_selects_one_group_and_refuses_a_missing_one(pack):
    nodes = pack("nodes.batch_images")
    photos = _ten_photos()
    inputs = {f"image_{i + 1}": photos[i] for i in range(2, 8)}
    images, _, layouts = batch_images(nodes, photos[0], photos[1], 0.05, 64, "crop", group_size=3,
                                                         only_group=2, **inputs).result
    assert len(images) == 1 and images[0].shape[0] == 3
    restored = nodes.EdichoRestoreImages.execute(images[0], layouts[0], True).result[0]
    assert [tuple(r.shape) for r in restored] == [tuple(photos[5].shape), tuple(photos[6].shape)]
    with pytest.raises(ValueError, match=r"EdichoBatchImages: only_group is 4 but 8 photos in groups of 3 make 4 groups "
                                         r"\(0..3\). Use -1"):
        batch_images(nodes, photos[0], photos[1], 0.05, 64, "crop", group_size=3, only_group=4, **inputs)


def _host_grows():
    from comfy_api.latest import io

    return hasattr(io, "Autogrow")


def _autogrow(host):
    if not _host_grows():
        pytest.skip("this host's V3 API has no Autogrow (growing inputs): the node keeps fixed sockets here")


def test_photos_and_masks_grow_where_the_host_offers_it(host, pack):
    _autogrow(host)
    schema = pack("nodes.batch_images").EdichoBatchImages.INPUT_TYPES()
    inputs = {**schema["required"], **schema.get("optional", {})}
    assert not any(name.startswith(("image_", "mask_")) for name in inputs)
    for group, kind, names in (("photos", "IMAGE", "image"), ("masks", "MASK", "mask")):
        io_type, spec = inputs[group]
        template = spec["template"]
        assert io_type == "COMFY_AUTOGROW_V3" and template["min"] == 0
        assert template["names"] == [f"{names}_{i}" for i in range(1, 9)]
        assert [t[0] for t in template["input"]["required"].values()] == [kind]


def test_fixed_sockets_where_the_host_cannot_grow_them(host, pack):
    if _host_grows():
        pytest.skip("this host grows the photo inputs (see test_photos_and_masks_grow_where_the_host_offers_it)")
    schema = pack("nodes.batch_images").EdichoBatchImages.INPUT_TYPES()
    assert list(schema["required"])[:2] == ["image_1", "image_2"]
    assert [n for n in schema["optional"] if n.startswith(("image_", "mask_"))] == \
        [f"image_{i}" for i in range(3, 9)] + [f"mask_{i}" for i in range(1, 9)]


def test_grown_inputs_run_in_a_graph_like_the_fixed_ones(host, sample_files):
    # What the frontend queues for a node whose sockets grew: `<group>.<name>` keys.
    _autogrow(host)
    graph = {
        "a": {"class_type": "LoadImage", "inputs": {"image": sample_files[0]}},
        "b": {"class_type": "LoadImage", "inputs": {"image": sample_files[1]}},
        "c": {"class_type": "LoadImage", "inputs": {"image": sample_files[2]}},
        "m": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}},
    }
    grown = {**graph, "batch": {"class_type": "EdichoBatchImages", "inputs": {
        "photos.image_1": ["a", 0], "photos.image_2": ["b", 0], "photos.image_3": ["c", 0],
        "megapixels": 0.07, "multiple": 64, "fit": "crop"}}}
    fixed = {**graph, "batch": {"class_type": "EdichoBatchImages", "inputs": {
        "image_1": ["a", 0], "image_2": ["b", 0], "image_3": ["c", 0], "megapixels": 0.07, "multiple": 64, "fit": "crop"}}}
    for workflow in (grown, fixed):
        workflow["out"] = {"class_type": "PreviewImage", "inputs": {"images": ["batch", 0]}}
    images = [runner.run_graph(workflow).output("batch") for workflow in (grown, fixed)]
    assert images[0].shape == (3, 256, 256, 3)
    assert torch.equal(images[0], images[1])
    grown["batch"]["inputs"]["masks.mask_2"] = ["m", 0]
    with pytest.raises(runner.GraphError, match="EdichoBatchImages: mask_2 is 1 x 64x64 but image_2 is"):
        runner.run_graph(grown)
