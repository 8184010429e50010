"""Real graphs with both patches, executed by the host on the tiny SD1.x checkpoint."""
from collections import Counter

import pytest
import torch

import runner
from graphs import edicho_img2img
from patch_calls import count_corr_attention_calls


def test_example_workflow_runs_with_both_patches_batch_three(host, tiny_sd15, sample_files, pack, monkeypatch):
    counts = count_corr_attention_calls(monkeypatch, pack)
    result = runner.run_graph(edicho_img2img(tiny_sd15, sample_files, steps=2))
    edited, plain = result.output("decode"), result.output("decode_plain")
    assert edited.shape == plain.shape == (3, 256, 256, 3)
    assert torch.isfinite(edited).all()
    assert not torch.equal(edited, plain)
    preview = result.output("preview")
    assert preview.shape == (3, 256, 512, 3)
    # Decoder self-attention at 1/16 (16x16 tokens) and 1/32 (8x8) of 256 px, 2 layers each,
    # 2 steps, cond+uncond in one call.
    per_grid = Counter()
    for (*_, tokens), n in counts.items():
        per_grid[tokens] += n
    assert per_grid == {256: 2 * 2, 64: 2 * 2}


@pytest.mark.parametrize("sampler, scheduler", [("dpmpp_2m", "karras"), ("heun", "simple")])
def test_other_samplers_and_schedulers(host, tiny_sd15, sample_files, sampler, scheduler):
    result = runner.run_graph(edicho_img2img(tiny_sd15, sample_files, steps=2, sampler=sampler, scheduler=scheduler))
    assert torch.isfinite(result.output("decode")).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the host's own sampling is not bit-reproducible from "
                    "one call to the next (fp16, cuDNN), so bit-identity is checked on the CPU")
@pytest.mark.parametrize("start, end", [(0.3, 0.35), (1.0, 1.0)])
def test_outside_the_step_range_sampling_is_bit_identical_to_unpatched(host, tiny_sd15, sample_files, start, end):
    # Denoise 0.6 in 2 euler steps evaluates sigma 1.62 and 0.029; percent 0.30..0.35 is sigma
    # 3.9..3.1, and 1.0..1.0 is sigma 0, which no step evaluates.
    graph = edicho_img2img(tiny_sd15, sample_files, steps=2, start_percent=start, end_percent=end)
    result = runner.run_graph(graph)
    assert torch.equal(result.output("sample")["samples"], result.output("sample_plain")["samples"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the host's own sampling is not bit-reproducible from "
                    "one call to the next (fp16, cuDNN), so bit-identity is checked on the CPU")
@pytest.mark.slow
def test_strength_zero_and_lambda_zero_sample_bit_identically_to_unpatched(host, tiny_sd15, sample_files):
    graph = edicho_img2img(tiny_sd15, sample_files, steps=2)
    graph["attention"]["inputs"]["strength"] = 0.0
    graph["fuser"]["inputs"]["lam"] = 0.0
    result = runner.run_graph(graph)
    assert torch.equal(result.output("sample")["samples"], result.output("sample_plain")["samples"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the host's own sampling is not bit-reproducible from "
                    "one call to the next (fp16, cuDNN), so bit-identity is checked on the CPU")
@pytest.mark.slow
def test_removing_the_nodes_restores_plain_output(host, tiny_sd15, sample_files):
    def plain_only():
        graph = edicho_img2img(tiny_sd15, sample_files, steps=2)
        graph["sample"]["inputs"]["model"] = ["ckpt", 0]
        for node in ("attention", "fuser", "preview", "save_preview"):
            graph.pop(node)
        return graph

    before = runner.run_graph(plain_only()).output("sample")["samples"]
    runner.run_graph(edicho_img2img(tiny_sd15, sample_files, steps=2))
    after = runner.run_graph(plain_only()).output("sample")["samples"]
    assert torch.equal(before, after)


def test_inside_the_step_range_sampling_changes(host, tiny_sd15, sample_files):
    result = runner.run_graph(edicho_img2img(tiny_sd15, sample_files, steps=2, start_percent=0.9, end_percent=1.0))
    assert not torch.equal(result.output("sample")["samples"], result.output("sample_plain")["samples"])


def test_sample_batch_not_matching_the_correspondence_is_a_clear_error(host, tiny_sd15, sample_files):
    graph = edicho_img2img(tiny_sd15, sample_files, steps=1)
    graph["two"] = {"class_type": "ImageBatch", "inputs": {"image1": ["load_a", 0], "image2": ["load_b", 0]}}
    graph["latent"]["inputs"]["pixels"] = ["two", 0]
    with pytest.raises(runner.GraphError, match=r"KSampler\) failed.*EdichoAttentionWarp.*batch of 2 latents.*3 images"):
        runner.run_graph(graph)


def test_input_model_is_not_mutated(host, sd15_parts, pack):
    Correspondence = pack("kernels.correspondence").Correspondence
    model = sd15_parts[0]
    before = repr(model.model_options)
    corr = Correspondence.identity(3, (32, 32), 0, (256, 256))
    patched = pack("nodes.attention_warp").apply_attention_warp(model, corr, "output", 0.08, 0.8, 1.0, "warp")
    patched = pack("nodes.noise_fuser").apply_noise_fuser(patched, corr, 0.8, 0.9, 0.08, 0.8, 0, "literal")
    assert repr(model.model_options) == before
    assert patched.model_options["transformer_options"]["patches_replace"]["attn1"]
    assert patched.model_options["sampler_pre_cfg_function"]


def test_inpainting_model_graph_with_a_mask_carried_from_the_reference(host, tiny_sd15_inpaint, sample_files):
    # The paper's local-edit setting: a mask drawn once on the reference, carried to every photo by
    # EdichoTransferPoints, an inpainting UNet, both patches.
    graph = edicho_img2img(tiny_sd15_inpaint, sample_files, steps=2)
    graph["drawn"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 256, "height": 256}}
    graph["square"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 96, "height": 96}}
    graph["mask"] = {"class_type": "MaskComposite", "inputs": {"destination": ["drawn", 0], "source": ["square", 0],
                                                               "x": 80, "y": 80, "operation": "add"}}
    graph["masks"] = {"class_type": "EdichoTransferPoints", "inputs": {"correspondence": ["correspondence", 0],
                                                                      "mask": ["mask", 0], "grow": 8}}
    graph["latent"] = {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["images", 0], "vae": ["ckpt", 2],
                                                                      "mask": ["masks", 0], "grow_mask_by": 6}}
    result = runner.run_graph(graph)
    model = result.output("ckpt", 0)
    assert model.model.diffusion_model.input_blocks[0][0].in_channels == 9
    assert result.output("masks").shape == (3, 256, 256)
    assert torch.isfinite(result.output("decode")).all()
    assert not torch.equal(result.output("sample")["samples"], result.output("sample_plain")["samples"])


def test_ten_photos_in_groups_of_four_share_the_reference_in_one_run(host, tiny_sd15, sample_images):
    from PIL import Image

    names = []
    for i in range(10):
        view = sample_images[i % 3].flip(1) if i % 2 else sample_images[i % 3]
        size = (256 - 16 * (i % 4), 256 + 16 * (i % 5))  # (h, w): every photo its own size
        resized = torch.nn.functional.interpolate(view.movedim(-1, 0)[None], size=size, mode="bilinear")[0]
        names.append(f"group-photo-{i}.png")
        Image.fromarray((resized.movedim(0, -1).clamp(0, 1) * 255).byte().numpy()).save(host.base_directory / "input" / names[-1])
    graph = edicho_img2img(tiny_sd15, names[:3], steps=2)
    for i, name in enumerate(names):
        graph[f"load_{i}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
    # Photos 8-10 arrive as one batch on the last socket (ImageBatch scales them to one size).
    graph["last_two"] = {"class_type": "ImageBatch", "inputs": {"image1": ["load_7", 0], "image2": ["load_8", 0]}}
    graph["last_three"] = {"class_type": "ImageBatch", "inputs": {"image1": ["last_two", 0], "image2": ["load_9", 0]}}
    graph["images"]["inputs"] = {f"image_{i + 1}": [f"load_{i}", 0] for i in range(7)} | {
        "image_8": ["last_three", 0], "megapixels": 0.066, "multiple": 64, "fit": "letterbox", "group_size": 4}
    graph["restore"] = {"class_type": "EdichoRestoreImages", "inputs": {"images": ["decode", 0], "layout": ["images", 2],
                                                                        "paste": False}}
    graph["save_restored"] = {"class_type": "PreviewImage", "inputs": {"images": ["restore", 0]}}
    result = runner.run_graph(graph)

    samples = [s["samples"] for s in result.output_list("sample")]
    assert [tuple(s.shape) for s in samples] == [(4, 4, 32, 32)] * 3
    scale = samples[0].abs().max()
    for group in samples[1:]:
        # Same seed and the reference first: its noise, and so its edit, is the same in every group.
        torch.testing.assert_close(group[0], samples[0][0], rtol=0, atol=1e-4 * float(scale))
        assert (group[1:] - group[0]).abs().max() > 1e-2 * scale
    restored = result.output_list("restore")
    expected_sizes = [(1, 256 - 16 * (i % 4), 256 + 16 * (i % 5), 3) for i in range(7)] + [(1, 256 - 16 * 3, 256 + 16 * 2, 3)] * 3
    assert [tuple(r.shape) for r in restored] == expected_sizes
    for name in names:
        (host.base_directory / "input" / name).unlink()
