"""The host's real server and frontend for the graph editor checks: start it on 127.0.0.1 with
the pack installed, and drive it with harness/editor_check.mjs in headless Chromium.

    ./edicho python harness/editor.py export   # writes workflows/*.json (UI format) from workflows/api/
"""
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
API_WORKFLOWS = REPO / "workflows" / "api"
UI_WORKFLOWS = REPO / "workflows"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(comfyui_path, home):
    """The host's server on a free 127.0.0.1 port, pack linked, first-visit dialogs off: yields its URL."""
    home = Path(home)
    (home / "custom_nodes").mkdir(parents=True, exist_ok=True)
    (home / "custom_nodes" / "comfyui-edicho").symlink_to(REPO, target_is_directory=True)
    (home / "user" / "default").mkdir(parents=True, exist_ok=True)
    (home / "user" / "default" / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    port = _free_port()
    args = [sys.executable, str(Path(comfyui_path) / "main.py"), "--listen", "127.0.0.1", "--port", str(port),
            "--base-directory", str(home)]
    import torch

    if not torch.cuda.is_available():
        args.append("--cpu")
    url = f"http://127.0.0.1:{port}/"
    with open(home / "server.log", "w") as log:
        server = subprocess.Popen(args, cwd=home, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": ""})
        try:
            for _ in range(120):
                try:
                    urllib.request.urlopen(url + "system_stats", timeout=2)
                    break
                except OSError:
                    if server.poll() is not None:
                        raise RuntimeError(f"the ComfyUI server exited: {(home / 'server.log').read_text()[-2000:]}")
                    time.sleep(0.5)
            else:
                raise RuntimeError("the ComfyUI server did not answer in 60 s")
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)


def check(url, out_dir, workflows, export_dir=None):
    """Run editor_check.mjs on `workflows`; its JSON report."""
    env = {**os.environ, **({"EXPORT_DIR": str(export_dir)} if export_dir else {})}
    run = subprocess.run(["node", str(REPO / "harness" / "editor_check.mjs"), url, str(out_dir), *map(str, workflows)],
                         capture_output=True, text=True, timeout=300, env=env)
    if run.returncode != 0:
        raise RuntimeError(f"editor_check.mjs failed: {run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main():
    if sys.argv[1:] != ["export"]:
        sys.exit("usage: ./edicho python harness/editor.py export")
    with tempfile.TemporaryDirectory() as home, serve(os.environ["COMFYUI_PATH"], home) as url:
        report = check(url, home, sorted(API_WORKFLOWS.glob("*.json")), export_dir=UI_WORKFLOWS)
    if report["errors"]:
        sys.exit(f"the editor reported errors: {report['errors']}")
    for result in report["results"]:
        print(f"{Path(result['workflow']).name}: {result['nodes']} nodes -> {UI_WORKFLOWS.relative_to(REPO)}/")


if __name__ == "__main__":
    main()
