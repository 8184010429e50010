"""The ground everything else stands on: the real host, the tiny checkpoint, the runner."""
import pytest
import torch

import runner
import tiny_checkpoints
from graphs import txt2img


def test_host_loads_the_pack_without_import_failure(host):
    assert host.pack_import_errors == []
    assert host.pack_module is not None


def test_host_starts_clean_every_core_node_imports(host):
    assert host.import_errors == []


def test_host_lists_every_node_the_pack_registers(host):
    import asyncio

    extension = asyncio.run(host.pack_module.comfy_entrypoint())
    declared = {cls.GET_SCHEMA().node_id for cls in asyncio.run(extension.get_node_list())}
    assert declared == set(host.pack_node_ids)
    for node_id in declared:
        assert node_id.startswith("Edicho")
        assert host.node_classes[node_id].GET_SCHEMA().category.startswith("edicho")


def test_tiny_sd15_is_detected_as_sd15_and_samples_a_batch_of_three(host, tiny_sd15):
    result = runner.run_graph(txt2img(tiny_sd15, batch=3, steps=2))
    model = result.output("ckpt", 0)
    assert type(model.model.model_config).__name__ == tiny_checkpoints.FAMILIES["sd15"]["expected_model_type"] == "SD15"
    images = result.output("decode")
    assert images.shape == (3, 256, 256, 3)
    assert torch.isfinite(images).all()
    # Three different noise draws: the images must differ.
    assert not torch.equal(images[0], images[1])


def test_tiny_sd15_has_decoder_self_attention_on_two_grids(host, tiny_sd15):
    import comfy.sd
    import folder_paths

    model, *_ = comfy.sd.load_checkpoint_guess_config(folder_paths.get_full_path("checkpoints", tiny_sd15))
    unet = model.model.diffusion_model
    with_attention = [i for i, block in enumerate(unet.output_blocks)
                      if any(type(layer).__name__ == "SpatialTransformer" for layer in block)]
    assert with_attention == [2, 3, 4, 5]


@pytest.mark.parametrize("mutate, expected", [
    (lambda g: g.update({"bad": {"class_type": "NoSuchNode", "inputs": {}}}), "NoSuchNode"),
    (lambda g: g["sample"]["inputs"].pop("seed"), "seed"),
    (lambda g: g["sample"]["inputs"].update({"model": ["ckpt", 1]}), "model"),
])
def test_broken_workflow_gives_a_readable_validation_error(host, tiny_sd15, mutate, expected):
    graph = txt2img(tiny_sd15)
    mutate(graph)
    with pytest.raises(runner.GraphError) as err:
        runner.run_graph(graph)
    text = str(err.value)
    assert "validation" in text or "invalid" in text.lower()
    assert expected in text
    assert "Traceback" not in text


@pytest.mark.parametrize("family", ["sd15", "sd15-controlnet", "sdxl", "sd35-medium", "wan21-vae"])
def test_this_host_builds_the_same_tiny_checkpoint_as_the_cached_one(host, family):
    # The cache is shared between hosts: whichever host built a file, this one must build the same
    # tensors under the same names from its own module classes.
    from safetensors.torch import load_file

    from conftest import CACHE

    cached = load_file(str(tiny_checkpoints.ensure_checkpoint(family, CACHE / "checkpoints")))
    built = tiny_checkpoints.build_state_dict(family)
    assert sorted(built) == sorted(cached)
    for key, tensor in built.items():
        assert torch.equal(tensor.to(cached[key].dtype), cached[key]), key
