"""The README's first command: `./edicho demo`, as a user runs it, on a user's own ComfyUI, whose models
folder holds an SD1.x checkpoint. The demo would take that one for a real edit (50 steps at 512 px);
the test passes --smoke, so it runs the tiny one whatever the models folder holds, and leaves that
ComfyUI as it was."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import demo
import tiny_checkpoints
from conftest import CACHE, REPO, tree_changes, tree_state

USERS_SD15 = "v1-5-pruned-emaonly.safetensors"
USERS_FOLDERS = {"custom_nodes", "models", "input", "output", "temp", "user"}


@pytest.fixture
def users_comfyui(tmp_path):
    """A copy of the host's tree laid out as a user's install: an SD1.x checkpoint in models/checkpoints
    (by its file name), and input, output, temp, user and custom_nodes folders with files in them."""
    source, root = Path(os.environ["COMFYUI_PATH"]), tmp_path / "ComfyUI"
    shutil.copytree(source, root, symlinks=True, ignore=lambda folder, names: [
        n for n in names if n == "__pycache__" or (Path(folder) == source and n in USERS_FOLDERS)])
    (root / "models" / "checkpoints").mkdir(parents=True)
    # Never read: the demo only looks at the name, and the tests run --smoke.
    (root / "models" / "checkpoints" / USERS_SD15).write_bytes(b"")
    for folder, name in (("input", "photo.png"), ("output", "ComfyUI_00001_.png"), ("temp", "preview.png"),
                         ("user", "comfyui.db"), ("user/default", "comfy.settings.json"), ("custom_nodes", "other.py")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / name).write_text("the user's")
    return root


def test_demo_would_take_the_users_sd15_checkpoint_but_smoke_takes_the_tiny_one(users_comfyui, monkeypatch):
    monkeypatch.setenv("COMFYUI_PATH", str(users_comfyui))
    assert demo.find_user_checkpoint(demo.parse_args([])) == users_comfyui / "models" / "checkpoints" / USERS_SD15
    assert demo.find_user_checkpoint(demo.parse_args(["--smoke"])) is None


def test_demo_smoke_run_on_a_users_comfyui_writes_only_its_results(host, users_comfyui, tmp_path):
    before = tree_state(users_comfyui)
    run = subprocess.run([sys.executable, "-P", str(REPO / "harness" / "demo.py"), "--smoke",
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={**os.environ, "COMFYUI_PATH": str(users_comfyui), "EDICHO_CACHE": str(CACHE),
                              "PYTHONPATH": ""})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "SMOKE RUN" in run.stdout and "RANDOM-WEIGHT" in run.stdout
    # Not the user's checkpoint's 50 steps at 512 px.
    assert "3 photos at 256px, 4 steps" in run.stdout, run.stdout[-2000:]
    written = sorted(p.name for p in (tmp_path / "out" / "edicho").glob("*.png"))
    assert [name.split("_")[0] for name in written] == ["correspondence"] * 3 + ["edicho"] * 3 + ["plain"] * 3
    assert tree_changes(before, tree_state(users_comfyui)) == []


@pytest.mark.parametrize("family, side", [("sd15", 512), ("sd2-v", 768), ("sdxl", 1024)])
def test_demo_samples_a_given_checkpoint_at_its_own_size(host, family, side):
    assert demo.native_size(tiny_checkpoints.ensure_checkpoint(family, CACHE / "checkpoints")) == side
