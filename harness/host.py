"""Boot the real ComfyUI host in this process, with the pack linked into a throwaway base
directory the way ComfyUI-Manager installs it (a link under custom_nodes/)."""
import asyncio
import inspect
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK_DIR_NAME = "comfyui-edicho"


@dataclass
class Host:
    path: Path
    base_directory: Path
    pack_module: object
    node_classes: dict
    pack_node_ids: list
    pack_import_errors: list
    import_errors: list


_HOST = None
_IMPORTED = None


def link_pack(base_directory):
    """Put the pack under `base_directory/custom_nodes/` as a link (a copy where links fail)."""
    custom_nodes = Path(base_directory) / "custom_nodes"
    custom_nodes.mkdir(parents=True, exist_ok=True)
    target = custom_nodes / PACK_DIR_NAME
    if target.is_symlink() or target.exists():
        if target.resolve() == REPO:
            return target
        target.unlink()
    target.symlink_to(REPO, target_is_directory=True)
    return target


def gpu_available():
    import torch
    return torch.cuda.is_available()


def import_host(comfyui_path=None, base_directory=None, extra_args=()):
    """Make the host's source importable with its command line parsed (`--cpu` without a GPU);
    load no node. Returns (comfyui_path, base_directory); once per process."""
    global _IMPORTED
    if _IMPORTED is not None:
        return _IMPORTED
    comfyui_path = Path(comfyui_path or os.environ["COMFYUI_PATH"]).resolve()
    base_directory = Path(base_directory or os.environ.get("EDICHO_HOST_HOME", REPO / ".host-home")).resolve()
    # Every model folder a test links files into exists before the host first lists it: the
    # host's file-list cache notices new files in a folder it saw, not a folder made later.
    for sub in ("models/checkpoints", "models/diffusion_models", "models/vae", "models/controlnet",
                "input", "output", "temp", "user"):
        (base_directory / sub).mkdir(parents=True, exist_ok=True)

    argv = ["main.py", "--base-directory", str(base_directory), *extra_args]
    if not gpu_available():
        # comfy.model_management raises "Found no NVIDIA driver" without it.
        argv.append("--cpu")
    sys.argv = argv
    sys.path.insert(0, str(comfyui_path))
    import comfy.options
    comfy.options.enable_args_parsing()
    import comfy.cli_args  # parses sys.argv
    # main.py imports the `utils` package before nodes.py puts comfy/ (with comfy/utils.py) first on sys.path.
    import utils.install_util  # noqa: F401
    import folder_paths
    args = comfy.cli_args.args
    # ComfyUI >= 0.37 (its own flags tell): main.py stops at start without the asset database's packages unless
    # --disable-assets is given; the harness needs no assets, so it starts as with that flag there.
    if hasattr(args, "disable_assets") and not args.disable_assets:
        import app.database.db

        args.disable_assets = not app.database.db.dependencies_available()
    # start_host loads no partner (API) nodes, as --disable-partner-nodes does where it replaced --disable-api-nodes
    # (>= 0.37: that one now also takes the frontend offline).
    if hasattr(args, "disable_partner_nodes"):
        args.disable_partner_nodes = True
    # main.py applies these itself; in-process we do.
    if comfy.cli_args.args.output_directory:
        folder_paths.set_output_directory(os.path.abspath(comfy.cli_args.args.output_directory))
    _IMPORTED = comfyui_path, base_directory
    return _IMPORTED


def prompt_server(server, loop):
    """The host's PromptServer, built as its main.py builds it: ComfyUI >= 0.37 takes the asset manager as well."""
    if "asset_manager" not in inspect.signature(server.PromptServer).parameters:
        return server.PromptServer(loop)
    import app.assets.manager

    return server.PromptServer(loop, app.assets.manager.default_asset_manager())


def start_host(comfyui_path=None, base_directory=None, extra_args=()):
    """Import the host (`import_host`) and load all nodes, the pack's among them; once per process."""
    global _HOST
    if _HOST is not None:
        return _HOST
    comfyui_path, base_directory = import_host(comfyui_path, base_directory, extra_args)
    pack_link = link_pack(base_directory)
    import execution  # noqa: F401
    import folder_paths
    import nodes
    import server

    # As main.py does: core nodes reach the server while they load (0.33 registers node
    # replacements on it). It is built, never started: nothing listens, and its loop stays
    # open so that a node's send_sync only queues.
    loop = asyncio.new_event_loop()
    if getattr(server.PromptServer, "instance", None) is None:
        prompt_server(server, loop)

    failed = []

    class _Catch(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            if "IMPORT FAILED" in msg or "Cannot import" in msg:
                failed.append(msg)

    catcher = _Catch()
    logging.getLogger().addHandler(catcher)
    try:
        loop.run_until_complete(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    finally:
        logging.getLogger().removeHandler(catcher)

    module_key = str(pack_link).replace(".", "_x_")
    pack_module = sys.modules.get(module_key)
    pack_ids = [name for name, cls in nodes.NODE_CLASS_MAPPINGS.items()
                if getattr(cls, "RELATIVE_PYTHON_MODULE", "") == f"custom_nodes.{PACK_DIR_NAME}"]
    pack_errors = [m for m in failed if str(pack_link) in m or m.endswith(f": {PACK_DIR_NAME}")]
    _HOST = Host(comfyui_path, base_directory, pack_module, nodes.NODE_CLASS_MAPPINGS, pack_ids, pack_errors, failed)
    assert folder_paths.base_path == str(base_directory)
    return _HOST
