"""The real graph editor: the host's server serves its own frontend, headless Chromium opens it,
loads every example workflow, and the Edicho nodes must be known and render with their inputs."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO

NODE_PATH = os.environ.get("NODE_PATH", "")
HAVE_BROWSER = bool(shutil.which("chromium") and shutil.which("node")
                    and (Path(NODE_PATH) / "playwright-core").exists())
WORKFLOWS = sorted((REPO / "workflows" / "api").glob("*.json"))
OUTPUT = REPO / "test-output" / "graph-editor"

pytestmark = pytest.mark.skipif(not HAVE_BROWSER, reason="needs Debian's chromium, node and playwright-core "
                                "(./edicho test installs them where it can: root with apt-get, npm)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def editor_url(host, tmp_path_factory):
    """The host's real server on 127.0.0.1 with the pack installed, first-visit dialogs off."""
    home = tmp_path_factory.mktemp("editor-home")
    (home / "custom_nodes").mkdir()
    (home / "custom_nodes" / "comfyui-edicho").symlink_to(REPO, target_is_directory=True)
    (home / "user" / "default").mkdir(parents=True)
    (home / "user" / "default" / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    port = free_port()
    args = [sys.executable, str(host.path / "main.py"), "--listen", "127.0.0.1", "--port", str(port),
            "--base-directory", str(home)]
    import torch

    if not torch.cuda.is_available():
        args.append("--cpu")
    log = open(home / "server.log", "w")
    server = subprocess.Popen(args, cwd=home, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONPATH": ""})
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "system_stats", timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"the ComfyUI server exited: {(home / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail("the ComfyUI server did not answer in 60 s")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_every_example_workflow_loads_in_the_editor_with_no_missing_nodes(editor_url):
    assert WORKFLOWS
    OUTPUT.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(["node", str(REPO / "harness" / "editor_check.mjs"), editor_url, str(OUTPUT),
                          *map(str, WORKFLOWS)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["errors"] == []
    for result in report["results"]:
        api = json.loads(Path(result["workflow"]).read_text())
        assert result["missing"] == [] and not result["missingDialog"], result
        assert result["nodes"] == len(api)
        rendered = {node["type"]: node for node in result["edicho"]}
        wanted = {n["class_type"] for n in api.values() if n["class_type"].startswith("Edicho")}
        assert set(rendered) == wanted
        for node in api.values():
            if node["class_type"].startswith("Edicho"):
                shown = set(rendered[node["class_type"]]["inputs"]) | set(rendered[node["class_type"]]["widgets"])
                assert set(node["inputs"]) <= shown, (node["class_type"], shown)
        # No seed of the pack randomises itself after each run: the correspondence must stay put.
        assert all("control_after_generate" not in n["widgets"] for n in result["edicho"])
        assert Path(result["screenshot"]).stat().st_size > 10_000
