"""Installing the pack the way users do: registry metadata, and ComfyUI-Manager's cm-cli on a fresh host."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, fresh_comfyui


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


# cm-cli runs every install step (pip, install.py) with the python that runs it, sys.executable: the Manager
# expects ComfyUI's own environment, where comfy-cli runs it as `<the workspace's python> -m cm_cli`. The
# host's virtualenv has no comfyui-manager, so the host's python runs cm-cli with the tools' site-packages
# after its own (the host's packages win where both have one).
RUN_CM_CLI = "import site, sys; site.addsitedir(sys.argv.pop(1)); sys.argv[0] = 'cm-cli'; from cm_cli import main; " \
             "sys.exit(main())"
TOOLS_SITE = "import json, sys, sysconfig; print(json.dumps([sysconfig.get_path('purelib'), sys.version_info[:2]]))"


def git(*args):
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.slow
def test_manager_cm_cli_install_on_a_fresh_host_loads_the_pack(host, tmp_path):
    tools = os.environ.get("EDICHO_TOOLS")
    if not tools:
        pytest.fail("EDICHO_TOOLS is not set: run the tests with `./edicho test`, which installs comfyui-manager in "
                    "a virtualenv of its own")
    site_packages, version = json.loads(subprocess.run([str(Path(tools) / "python"), "-c", TOOLS_SITE],
                                                       capture_output=True, text=True, check=True).stdout)
    if tuple(version) != sys.version_info[:2]:
        pytest.skip(f"cm-cli runs on the host's Python {sys.version_info[0]}.{sys.version_info[1]} with the tools' "
                    f"packages, made for Python {version[0]}.{version[1]}")
    # The repository as the Manager finds it: a clone named like the pack, whose name cm-cli gives the folder.
    # file://localhost: cm-cli takes a URL only with a host part, which file:///... lacks.
    origin = tmp_path / "repos" / "comfyui-edicho.git"
    git("clone", "-q", "--bare", "--depth", "1", f"file://{REPO}", str(origin))
    url = f"file://localhost{origin}"
    # cm-cli writes its user folder (config, cache, snapshots) into the ComfyUI it is pointed at.
    comfyui = fresh_comfyui(tmp_path / "ComfyUI")
    # --mode cache: the pip-installed Manager then reads its bundled channel lists and an empty registry cache,
    # where remote or local would fetch the registry's node list from api.comfy.org.
    # COLUMNS: cm-cli prints through rich, which folds lines at 80 columns without a terminal.
    install = subprocess.run([sys.executable, "-c", RUN_CM_CLI, site_packages, "install", url, "--mode", "cache"],
                             capture_output=True, text=True, timeout=300,
                             env={**os.environ, "COMFYUI_PATH": str(comfyui), "PYTHONPATH": "", "COLUMNS": "1000"})
    installed = install.stdout + install.stderr
    # cm-cli exits 0 when an install fails, with an ERROR line in place of this one.
    assert install.returncode == 0 and f"[INSTALLED] {url}" in installed, installed[-3000:]
    # Nor an ERROR elsewhere, such as "PyTorch is not installed" from its check of the environment after pip,
    # which it prints where it runs in an environment without the host's packages (the tools' own).
    assert "ERROR" not in installed, installed[-3000:]
    clone = comfyui / "custom_nodes" / "comfyui-edicho"
    assert git("-C", str(clone), "rev-parse", "HEAD") == git("-C", str(REPO), "rev-parse", "HEAD")
    assert (clone / "__init__.py").is_file() and (clone / "node_list.json").is_file()

    args = [sys.executable, str(host.path / "main.py"), "--quick-test-for-ci", "--base-directory", str(comfyui)]
    # Else the host makes its user database in its own tree (user/comfyui.db, whatever the base directory), or
    # logs an error where that tree has no user folder.
    if "--database-url" in (host.path / "comfy" / "cli_args.py").read_text():
        args += ["--database-url", f"sqlite:///{tmp_path / 'comfyui.db'}"]
    import torch

    if not torch.cuda.is_available():
        args.append("--cpu")
    run = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": ""})
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-2000:]
    loaded = [line for line in log.splitlines() if line.rstrip().endswith(str(clone))]
    assert loaded and "IMPORT FAILED" not in loaded[0], log[-2000:]
    # A clean start: no core node of the host fails to import either (e.g. its audio nodes without torchaudio),
    # and no error is logged (0.33 marks its levels, "[ERROR]").
    assert "IMPORT FAILED" not in log and "Traceback" not in log and "ERROR" not in log, log[-3000:]
