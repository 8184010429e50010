"""The pack as the registry and the ecosystem's checkers see it: `comfy node validate` and `comfy node
pack` (comfy-cli) build a package of the runtime only, and comfy-import-guard finds the whole repository
SAFE against the host's own tree. The tools come from their own virtualenv (`./edicho test` sets
$EDICHO_TOOLS); nothing here boots the host."""
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNTIME = {"__init__.py", "nodes", "kernels", "web", "workflows", "node_list.json", "README.md", "LICENSE", "pyproject.toml",
           "requirements.txt"}
NOT_SHIPPED = {"tests", "harness", "bench", ".ci", "docs", "edicho"}


@pytest.fixture(scope="module")
def tools():
    found = os.environ.get("EDICHO_TOOLS")
    if not found:
        pytest.fail("EDICHO_TOOLS is not set: run the tests with `./edicho test`, which installs comfy-cli and "
                    "comfy-import-guard in a virtualenv of their own")
    return Path(found)


def run(cmd, cwd, **kwargs):
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=300, **kwargs)
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def git(*args, cwd):
    return run(["git", "-c", "user.email=ci@edicho", "-c", "user.name=ci", *args], cwd)


def copy_of_the_working_tree(dest):
    """What a clone of this working tree holds: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def test_comfy_node_pack_ships_the_runtime_only(tools, tmp_path):
    work = copy_of_the_working_tree(tmp_path / "comfyui-edicho")
    git("init", "-q", cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-qm", "pack", cwd=work)
    cli = [tools / "comfy", "--skip-prompt", "--no-enable-telemetry", "node"]
    assert "All validation checks passed" in run([*cli, "validate"], work)
    run([*cli, "pack"], work)
    with zipfile.ZipFile(work / "node.zip") as package:
        names = package.namelist()
    tops = {name.split("/")[0] for name in names}
    assert RUNTIME <= tops
    assert not tops & NOT_SHIPPED
    assert not [n for n in names if n.endswith(".png") or "__pycache__" in n]
    assert {"nodes/families/__init__.py", "kernels/corr_attention.py"} <= set(names)
    assert sum(1 for n in names if n.startswith("workflows/api/")) == len(list((REPO / "workflows" / "api").glob("*.json")))
    # The help pages and their pictures (web/docs/, unlike the README's docs/).
    assert {n for n in names if n.startswith("web/")} == {p.relative_to(REPO).as_posix() for p in (REPO / "web").rglob("*")
                                                         if p.is_file()}


def test_comfy_import_guard_finds_the_whole_repository_safe_on_this_host(tools, tmp_path):
    host = Path(os.environ["COMFYUI_PATH"])
    # comfy-import-guard resolves against a git clone of ComfyUI; offline, the host's own tree as one tagged commit.
    clone = tmp_path / "cache" / "ComfyUI"
    shutil.copytree(host, clone, ignore=shutil.ignore_patterns("custom_nodes", "models", "input", "output", "temp",
                                                               "user", "__pycache__", ".git", "*.pyc"))
    git("init", "-q", cwd=clone)
    git("add", "-A", cwd=clone)
    git("commit", "-qm", "host", cwd=clone)
    git("tag", "host", cwd=clone)
    install = tmp_path / "install"
    (install / "custom_nodes").mkdir(parents=True)
    (install / "custom_nodes" / "comfyui-edicho").symlink_to(REPO)
    report = run([tools / "comfy-import-guard", "check", "--cache-dir", tmp_path / "cache", "--offline", "--no-update",
                  "--comfy-dir", install, "--target", "host", "--strict"], tmp_path)
    assert "[ok] comfyui-edicho  SAFE" in report
    assert "0 will break, 1 safe, 0 warn" in report
