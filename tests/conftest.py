"""Shared fixtures.

The pack is importable as `comfyui_edicho` without running its `__init__.py`, so kernels load
with no host on the path. Host fixtures boot the real ComfyUI (from $COMFYUI_PATH, as set up
by `./edicho test`) once per session, in a throwaway base directory.
"""
import os
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "harness"
CACHE = Path(os.environ.get("EDICHO_CACHE", Path.home() / ".cache" / "comfyui-edicho"))

if "comfyui_edicho" not in sys.modules:
    _pkg = types.ModuleType("comfyui_edicho")
    _pkg.__path__ = [str(REPO)]
    sys.modules["comfyui_edicho"] = _pkg
if str(HARNESS) not in sys.path:
    sys.path.insert(0, str(HARNESS))


@pytest.fixture(scope="session")
def host(tmp_path_factory):
    """The real ComfyUI host, booted in-process with the pack linked under custom_nodes/."""
    if not os.environ.get("COMFYUI_PATH"):
        pytest.fail("COMFYUI_PATH is not set: run the tests with `./edicho test`, which sets up the host")
    import host as host_mod

    return host_mod.start_host(base_directory=tmp_path_factory.mktemp("host-home"))


@pytest.fixture(scope="session")
def tiny_sd15(host):
    """File name (in the host's checkpoints folder) of the tiny SD1.x checkpoint."""
    import tiny_checkpoints

    return link_checkpoint(host, tiny_checkpoints.ensure_checkpoint("sd15", CACHE / "checkpoints"))


def link_checkpoint(host, path, folder="checkpoints"):
    link = host.base_directory / "models" / folder / path.name
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(path)
    return path.name


@pytest.fixture(scope="session")
def sd15_parts(host, tiny_sd15):
    """(model, clip, vae) of the tiny SD1.x checkpoint, loaded by the host's own loader."""
    import comfy.sd
    import folder_paths

    model, clip, vae, *_ = comfy.sd.load_checkpoint_guess_config(folder_paths.get_full_path("checkpoints", tiny_sd15))
    return model, clip, vae


@pytest.fixture(scope="session")
def pack(host):
    """The pack's modules as the host loaded them (nodes, kernels), by submodule name."""
    import importlib

    return lambda name: importlib.import_module(f"{host.pack_module.__name__}.{name}")


@pytest.fixture(scope="session")
def sample_images():
    """The bundled sample group at 256 px: IMAGE [3, 256, 256, 3]."""
    import sample_photos

    return sample_photos.sample_group(256)


@pytest.fixture(scope="session")
def sample_files(host):
    """The sample group as PNGs in the host's input folder (for LoadImage)."""
    import sample_photos

    return sample_photos.write_sample_group(host.base_directory / "input", 256)


@pytest.fixture(scope="session")
def tiny_sd15_inpaint(host):
    """File name of the tiny SD1.x inpainting checkpoint (9 input channels)."""
    import tiny_checkpoints

    return link_checkpoint(host, tiny_checkpoints.ensure_checkpoint("sd15-inpaint", CACHE / "checkpoints"))


@pytest.fixture(scope="session")
def tiny_checkpoint(host):
    """(family, models folder) -> file name of that family's tiny checkpoint in the host's folder (built once)."""
    import tiny_checkpoints

    return lambda family, folder="checkpoints": link_checkpoint(
        host, tiny_checkpoints.ensure_checkpoint(family, CACHE / "checkpoints"), folder)
