"""Installing the pack the way users do: registry metadata, and a Manager-style install on a fresh host."""
import os
import re
import subprocess
import sys

from conftest import REPO


def test_pyproject_passes_the_hosts_registry_schema(host):
    from comfy_config import config_parser

    config = config_parser.extract_node_configuration(str(REPO))
    assert config is not None
    assert config.project.name == "comfyui-edicho"
    assert re.fullmatch(r"\d+\.\d+\.\d+", config.project.version)
    assert config.project.description and config.project.license.file == "LICENSE"
    assert config.project.urls.repository.startswith("https://")
    assert config.tool_comfy.publisher_id and config.tool_comfy.display_name
    assert (REPO / config.project.license.file).exists()


def test_manager_style_install_on_a_fresh_host_loads_the_pack(host, tmp_path):
    # Manager clones the repository into custom_nodes/ and installs requirements.txt; then ComfyUI starts.
    custom_nodes = tmp_path / "custom_nodes"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{REPO}", str(custom_nodes / "comfyui-edicho")],
                   check=True)
    clone = custom_nodes / "comfyui-edicho"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(clone / "requirements.txt")], check=True)
    args = [sys.executable, str(host.path / "main.py"), "--quick-test-for-ci", "--base-directory", str(tmp_path)]
    import torch

    if not torch.cuda.is_available():
        args.append("--cpu")
    run = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": ""})
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-2000:]
    loaded = [line for line in log.splitlines() if line.rstrip().endswith(str(clone))]
    assert loaded and "IMPORT FAILED" not in loaded[0], log[-2000:]
    # A clean start: no core node of the host fails to import either (e.g. its audio nodes without torchaudio).
    assert "IMPORT FAILED" not in log and "Traceback" not in log, log[-3000:]
