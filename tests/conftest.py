"""Shared fixtures and the test tiers.

The pack is importable as `comfyui_edicho` without running its `__init__.py`, so kernels load
with no host on the path. Host fixtures boot the real ComfyUI (from $COMFYUI_PATH, as set up
by `./edicho test`) once per session, in a throwaway base directory.

Markers: `host` = the test boots the host (loads all its nodes; set here on every test that
asks for the `host` fixture, and by the modules that start a server); `slow` = over about
20 s on 2 CPU cores. `./edicho test -m "not host"` is the fast tier: kernels and the patch
math, with the host's source importable but nothing booted.
"""
import os
import shutil
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


def pytest_collection_modifyitems(items):
    for item in items:
        if "host" in item.fixturenames:
            item.add_marker(pytest.mark.host)


def tree_state(root):
    """Every file and folder under `root`: {relative path: (size, mtime) for a file, None for a folder}.

    Bytecode caches are left out: Python writes them wherever it imports from, as ComfyUI's own start does."""
    state = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in dirs:
            state[os.path.relpath(os.path.join(folder, name), root)] = None
        for name in files:
            info = os.lstat(os.path.join(folder, name))
            state[os.path.relpath(os.path.join(folder, name), root)] = (info.st_size, info.st_mtime_ns)
    return state


def tree_changes(before, after):
    """Paths added, removed or changed between two `tree_state`s, sorted."""
    return sorted(path for path in before.keys() | after.keys() if before.get(path, 0) != after.get(path, 0))


def fresh_comfyui(dest):
    """A copy of $COMFYUI_PATH's source at `dest`, without its models, user data or custom nodes (an empty
    custom_nodes/): for tools that write into the ComfyUI they are pointed at, as ComfyUI-Manager does."""
    source = Path(os.environ["COMFYUI_PATH"])
    shutil.copytree(source, dest, ignore=lambda folder, names: [n for n in names if n in ("__pycache__", ".git") or (
        Path(folder) == source and n in ("custom_nodes", "models", "input", "output", "temp", "user"))])
    (dest / "custom_nodes").mkdir()
    return dest


@pytest.fixture(scope="session", autouse=True)
def comfyui_path_left_as_it_was():
    """The suite writes nothing into $COMFYUI_PATH, which may be a user's own ComfyUI: its models, input,
    output, temp and user folders (database included) stay as they were. Checked when the session ends."""
    root = os.environ.get("COMFYUI_PATH")
    before = tree_state(root) if root else {}
    yield
    if root:
        changed = tree_changes(before, tree_state(root))
        assert not changed, f"the tests wrote into $COMFYUI_PATH ({root}): {changed[:20]}"


@pytest.fixture(scope="session")
def host_source(tmp_path_factory):
    """The host's source importable (`--cpu` without a GPU), no node loaded: (comfyui_path, base_directory)."""
    if not os.environ.get("COMFYUI_PATH"):
        pytest.fail("COMFYUI_PATH is not set: run the tests with `./edicho test`, which sets up the host")
    import host as host_mod

    return host_mod.import_host(base_directory=tmp_path_factory.mktemp("host-home"))


@pytest.fixture(scope="session")
def host(host_source):
    """The real ComfyUI host, booted in-process with the pack linked under custom_nodes/."""
    import host as host_mod

    return host_mod.start_host()


@pytest.fixture(scope="session")
def tiny_sd15(host):
    """File name (in the host's checkpoints folder) of the tiny SD1.x checkpoint."""
    import tiny_checkpoints

    return link_checkpoint(host, tiny_checkpoints.ensure_checkpoint("sd15", CACHE / "checkpoints"))


def link_checkpoint(host, path, folder="checkpoints", name=None):
    """Link `path` into the host's models `folder` (as `name`, else its own name); the name the host lists."""
    link = host.base_directory / "models" / folder / (name or path.name)
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(path)
    return link.name


@pytest.fixture(scope="session")
def sd15_parts(host, tiny_sd15):
    """(model, clip, vae) of the tiny SD1.x checkpoint, loaded by the host's own loader."""
    import comfy.sd
    import folder_paths

    model, clip, vae, *_ = comfy.sd.load_checkpoint_guess_config(folder_paths.get_full_path("checkpoints", tiny_sd15))
    return model, clip, vae


def relative(a, b):
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def server_home(home, checkpoint):
    """`home` made a base directory for a real server (`editor.serve`): `checkpoint` linked into its checkpoints
    folder, the sample group written to its input folder; the photos' names."""
    import sample_photos

    (home / "models" / "checkpoints").mkdir(parents=True)
    (home / "models" / "checkpoints" / checkpoint.name).symlink_to(checkpoint)
    return sample_photos.write_sample_group(home / "input", 256)


@pytest.fixture
def pack(request, host_source):
    """The pack's modules (nodes, kernels) by submodule name.

    In a test that boots the host, the modules the host loaded, so that a monkeypatch reaches
    the code its graphs run; otherwise imported on the host's source with nothing booted.
    """
    import importlib

    package = request.getfixturevalue("host").pack_module.__name__ if "host" in request.fixturenames \
        else "comfyui_edicho"
    return lambda name: importlib.import_module(f"{package}.{name}")


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
    """(family, models folder[, name]) -> file name of that family's tiny checkpoint in the host's folder (built once)."""
    import tiny_checkpoints

    return lambda family, folder="checkpoints", name=None: link_checkpoint(
        host, tiny_checkpoints.ensure_checkpoint(family, CACHE / "checkpoints"), folder, name)
