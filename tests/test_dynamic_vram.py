"""The extractor's early stop through the real server with the host's defaults: on 0.33 with a GPU, DynamicVRAM
(ModelPatcherDynamic, weights streamed into VRAM module by module as the UNet runs them).

main.py turns DynamicVRAM on (CoreModelPatcher = ModelPatcherDynamic) on an NVIDIA GPU unless --disable-dynamic-vram,
--highvram, --gpu-only, --novram or --cpu is given; the in-process host of the other tests never runs main.py, so
only a server started from it has it. The server with the host's defaults runs the example graph (extractor,
matcher, both patches, sampling) twice, the second time after the first's early stop and sampling on the same
loaded model; one with --disable-dynamic-vram runs it once, for its features. Probe nodes (tests/server_probe)
report from inside each server. On the CPU (`--cpu`: DynamicVRAM off, and the host
reroutes a CPU load device to the plain ModelPatcher anyway) the same graphs and checks run without it.

Figures go to test-output/dynamic_vram.json (the GPU check's "dynamic VRAM" section).
"""
import json
import re

import pytest
import safetensors.torch
import torch

import editor
import tiny_checkpoints
from conftest import CACHE, REPO, relative, server_home
from graphs import edicho_img2img

pytestmark = [pytest.mark.host, pytest.mark.slow]

FIGURES = REPO / "test-output" / "dynamic_vram.json"
PROBE = REPO / "tests" / "server_probe"
RUNS = 2
# Tiny SD1.x: 2 output blocks per level; the auto level (1) is captured as it enters block 4, and blocks 4-7 never run.
EXTRACTION_BLOCK = 4
# Features of the same graph from another run or another loading scheme, relative L2: 0 on the CPU (bit for bit);
# on a GPU kernels may round differently from one call to the next, far below fp16 compute's own 1.3e-3 (README,
# Precision).
FEATURE_TOLERANCE = 1e-3
# What main.py logs on turning DynamicVRAM on, failing to, or being told not to ("Dynamic vram disabled ...").
DYNAMIC_VRAM_LOG = re.compile(r"dynamic ?vram", re.IGNORECASE)
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def figures():
    """Measured figures by name, written to test-output/dynamic_vram.json at the end of the module."""
    found = {}
    yield found
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(found, indent=1, sort_keys=True))


def probed_graph(ckpt_name, photos, run):
    """The example graph at tiny size with the probes around the extractor and the sampled latent saved; without
    the unpatched branch, so that the extractor is the UNet's first use in a server."""
    graph = edicho_img2img(ckpt_name, photos, steps=2, ensemble=2)
    for node in ("sample_plain", "decode_plain", "save_plain"):
        del graph[node]
    graph["probe_unet"] = {"class_type": "EdichoProbeUNet", "inputs": {"model": ["ckpt", 0], "run": run}}
    graph["features"]["inputs"]["model"] = ["probe_unet", 0]
    graph["probe_features"] = {"class_type": "EdichoProbeFeatures", "inputs": {
        "features": ["features", 0], "model": ["probe_unet", 0], "run": run}}
    graph["correspondence"]["inputs"]["features"] = ["probe_features", 0]
    graph["save_latent"] = {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0],
                                                                   "filename_prefix": f"edicho-probe/run-{run}"}}
    return graph


def serve_and_run(comfyui_path, home, runs, extra_args=()):
    """Start a server in `home` with `extra_args`, run the probed graph `runs` times in a row on it: per run the
    probe's record with the features and the sampled latent; and the server log's DynamicVRAM lines."""
    checkpoint = tiny_checkpoints.ensure_checkpoint("sd15", CACHE / "checkpoints")
    photos = server_home(home, checkpoint)
    (home / "custom_nodes").mkdir()
    (home / "custom_nodes" / "edicho-probe").symlink_to(PROBE, target_is_directory=True)
    results = []
    with editor.serve(comfyui_path, home, extra_args) as url:
        for run in range(1, runs + 1):
            entry = editor.wait_for_prompt(url, editor.queue_prompt(url, probed_graph(checkpoint.name, photos, run)))
            assert entry["status"]["status_str"] == "success", (entry["status"],
                                                                 (home / "server.log").read_text()[-3000:])
            (record,) = entry["outputs"]["probe_features"]["probe"]
            (saved,) = entry["outputs"]["save_latent"]["latents"]
            output = home / "output"
            record["features"] = torch.load(output / record.pop("features_file"), weights_only=True)
            latent_file = output / saved["subfolder"] / saved["filename"]
            record["latent"] = safetensors.torch.load_file(latent_file)["latent_tensor"]
            results.append(record)
    plain = ANSI_COLOUR.sub("", (home / "server.log").read_text())
    log = [line.strip() for line in plain.splitlines() if DYNAMIC_VRAM_LOG.search(line)]
    return results, log


def host_has_dynamic_vram():
    import comfy.cli_args

    return hasattr(comfy.cli_args.args, "disable_dynamic_vram")


def summary(results, log, extra_args):
    """A server's figures: its flags, patcher, DynamicVRAM, and per run what the probe saw."""
    return {"flags beyond --cpu without a GPU": [*extra_args], "server log, DynamicVRAM": log,
            "patcher": results[0]["patcher"], "dynamic_vram_active": results[0]["dynamic_vram_active"],
            "runs": [{key: result[key] for key in ("output_block_calls", "unet_bytes", "unet_loaded_bytes")}
                     for result in results]}


@pytest.fixture(scope="module")
def defaults(host_source, tmp_path_factory):
    """The server with the host's defaults (`--cpu` only where there is no GPU), the graph run RUNS times."""
    comfyui_path, _ = host_source
    return serve_and_run(comfyui_path, tmp_path_factory.mktemp("defaults"), RUNS)


def stopped_early(result):
    """Whether the extractor ran the output blocks before its level, each as often, and none after it."""
    calls = result["output_block_calls"]
    before, after = calls[:EXTRACTION_BLOCK], calls[EXTRACTION_BLOCK:]
    return min(before) == max(before) > 0 and not any(after)


def test_early_stop_survives_the_hosts_defaults_twice_through_the_real_server(defaults, figures):
    results, log = defaults
    found = figures["defaults"] = summary(results, log, [])
    first, second = results[0], results[-1]
    found["run 2 vs run 1, features, relative L2"] = relative(second["features"], first["features"])
    found["run 2 vs run 1, sampled latent, relative L2"] = relative(second["latent"], first["latent"])
    # main.py: on an NVIDIA GPU the default; never on the CPU (`--cpu`).
    expected_dynamic = torch.cuda.is_available() and host_has_dynamic_vram()
    assert [r["dynamic_vram_active"] for r in results] == [expected_dynamic] * RUNS, log
    assert {r["patcher"] for r in results} == {"ModelPatcherDynamic" if expected_dynamic else "ModelPatcher"}
    assert all(stopped_early(r) for r in results), found["runs"]
    assert all(torch.isfinite(r["latent"]).all() for r in results)
    assert found["run 2 vs run 1, features, relative L2"] <= FEATURE_TOLERANCE


def test_with_dynamic_vram_off_the_features_are_the_same(host_source, defaults, tmp_path_factory, figures):
    if not host_has_dynamic_vram():
        pytest.skip("this host has no DynamicVRAM (no --disable-dynamic-vram): the defaults run is the only one")
    comfyui_path, _ = host_source
    flags = ["--disable-dynamic-vram"]
    (off,), log = serve_and_run(comfyui_path, tmp_path_factory.mktemp("dynamic-vram-off"), 1, flags)
    found = figures["dynamic VRAM off"] = summary([off], log, flags)
    first = defaults[0][0]
    found["features vs defaults run 1, relative L2"] = relative(off["features"], first["features"])
    found["sampled latent vs defaults run 1, relative L2"] = relative(off["latent"], first["latent"])
    assert not off["dynamic_vram_active"] and off["patcher"] == "ModelPatcher"
    assert stopped_early(off), found["runs"]
    assert found["features vs defaults run 1, relative L2"] <= FEATURE_TOLERANCE
