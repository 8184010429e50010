"""The host's real server and frontend for the graph editor checks: start it on 127.0.0.1 with
the pack installed, and drive it with harness/editor_check.mjs (and help_check.mjs) in headless Chromium.

    ./edicho python harness/editor.py export   # writes workflows/*.json (UI format) from workflows/api/

The export also gives every node the `cnr_id` and `ver` properties ComfyUI-Manager's frontend extension
(workflow-metadata.js) writes on nodes it creates: the pack's registry id and version for Edicho's
nodes, `comfy-core` and the host's version for core nodes. The frontend's missing-nodes dialog reads
them to name the pack a shared workflow needs.
"""
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import re
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Run as a script with -P (./edicho), which keeps the script's folder off sys.path.
sys.path.insert(0, str(REPO / "harness"))
import workflow_layout  # noqa: E402
API_WORKFLOWS = REPO / "workflows" / "api"
UI_WORKFLOWS = REPO / "workflows"
# pyproject.toml's [project] name and version (tomllib is 3.11+; the pack supports 3.10).
_PROJECT = (REPO / "pyproject.toml").read_text().split("[project]\n", 1)[1].split("\n[", 1)[0]
PACK = dict(re.findall(r'^(name|version) = "([^"]+)"$', _PROJECT, re.M))
CORE_MODULES = ("nodes", "comfy_extras", "comfy_api_nodes")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(comfyui_path, home, extra_args=()):
    """The host's server on a free 127.0.0.1 port, pack linked, first-visit dialogs off, `extra_args` on its
    command line: yields its URL. Its log is `home/server.log`."""
    home = Path(home)
    (home / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = home / "custom_nodes" / "comfyui-edicho"
    if not link.is_symlink():
        link.symlink_to(REPO, target_is_directory=True)
    (home / "user" / "default").mkdir(parents=True, exist_ok=True)
    (home / "user" / "default" / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    port = _free_port()
    # The host's database defaults to <ComfyUI>/user/comfyui.db whatever --base-directory says: keep it in home.
    args = [sys.executable, str(Path(comfyui_path) / "main.py"), "--listen", "127.0.0.1", "--port", str(port),
            "--base-directory", str(home), "--database-url", f"sqlite:///{home / 'user' / 'comfyui.db'}", *extra_args]
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


def queue_prompt(url, workflow):
    """Queue an API-format workflow on the server at `url`: its prompt id."""
    request = urllib.request.Request(url + "prompt", json.dumps({"prompt": workflow}).encode(),
                                     {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request).read())["prompt_id"]


def wait_for_prompt(url, prompt_id, timeout=240):
    """The server's history entry of a queued prompt once it has finished (`status`, `outputs`)."""
    for _ in range(timeout * 2):
        history = fetch_json(f"{url}history/{prompt_id}")
        if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
            return history[prompt_id]
        time.sleep(0.5)
    raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")


def check(url, out_dir, workflows, export_dir=None, capture_dir=None):
    """Run editor_check.mjs on `workflows`; its JSON report."""
    env = {**os.environ, **({"EXPORT_DIR": str(export_dir)} if export_dir else {}),
           **({"CAPTURE_DIR": str(capture_dir)} if capture_dir else {})}
    run = subprocess.run(["node", str(REPO / "harness" / "editor_check.mjs"), url, str(out_dir), *map(str, workflows)],
                         capture_output=True, text=True, timeout=300, env=env)
    if run.returncode != 0:
        raise RuntimeError(f"editor_check.mjs failed: {run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def help_panel(url, out_dir, workflow, node_type, expected):
    """Run help_check.mjs: open `node_type`'s help from `workflow` and wait for `expected` text; its JSON report."""
    run = subprocess.run(["node", str(REPO / "harness" / "help_check.mjs"), url, str(out_dir), str(workflow),
                          node_type, expected], capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        raise RuntimeError(f"help_check.mjs failed: {run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def fetch_json(url):
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def pack_properties(workflow, object_info, core_version):
    """`workflow` (UI format) with `cnr_id` and `ver` on each node the host defines, as the Manager writes them."""
    for node in workflow["nodes"]:
        module = object_info.get(node["type"], {}).get("python_module", "")
        if module.split(".")[0] in CORE_MODULES:
            tags = {"cnr_id": "comfy-core", "ver": core_version}
        elif module == f"custom_nodes.{PACK['name']}":
            tags = {"cnr_id": PACK["name"], "ver": PACK["version"]}
        else:
            continue
        node["properties"] = {**node.get("properties", {}), **tags}
    return workflow


THUMBNAIL_WIDTH = 640
README_PICTURE = (REPO / "docs" / "graph-editor.png", "edicho_inpaint")


def picture_workflows(url, ui_files):
    """Each UI workflow pictured whole in the editor at `url`: its template thumbnail `workflows/<name>.jpg` (the
    newer frontends' template browser fetches it) and the README's picture of one of them."""
    from PIL import Image

    written = []
    with tempfile.TemporaryDirectory() as shots:
        for result in check(url, shots, ui_files, capture_dir=shots)["results"]:
            picture, name = Image.open(result["capture"]).convert("RGB"), Path(result["workflow"]).stem
            thumbnail = picture.resize((THUMBNAIL_WIDTH, round(picture.height * THUMBNAIL_WIDTH / picture.width)),
                                       Image.LANCZOS)
            thumbnail.save(UI_WORKFLOWS / f"{name}.jpg", quality=82, optimize=True)
            written.append(UI_WORKFLOWS / f"{name}.jpg")
            if name == README_PICTURE[1]:
                picture.quantize(colors=128).save(README_PICTURE[0], optimize=True)
                written.append(README_PICTURE[0])
    return written


def main():
    if sys.argv[1:] != ["export"]:
        sys.exit("usage: ./edicho python harness/editor.py export")
    api_files = sorted(API_WORKFLOWS.glob("*.json"))
    with tempfile.TemporaryDirectory() as home, serve(os.environ["COMFYUI_PATH"], home) as url:
        report = check(url, home, api_files, export_dir=UI_WORKFLOWS)
        if report["errors"]:
            sys.exit(f"the editor reported errors: {report['errors']}")
        object_info = fetch_json(url + "object_info")
        core_version = fetch_json(url + "system_stats")["system"]["comfyui_version"]
        for api_file, path in ((p, UI_WORKFLOWS / p.name) for p in api_files):
            tagged = pack_properties(json.loads(path.read_text()), object_info, core_version)
            laid_out = workflow_layout.lay_out(tagged, json.loads(api_file.read_text()), api_file.stem)
            path.write_text(json.dumps(laid_out, indent=1, ensure_ascii=False) + "\n")
        pictures = picture_workflows(url, [UI_WORKFLOWS / p.name for p in api_files])
    for result in report["results"]:
        print(f"{Path(result['workflow']).name}: {result['nodes']} nodes -> {UI_WORKFLOWS.relative_to(REPO)}/")
    print("pictures: " + ", ".join(str(p.relative_to(REPO)) for p in pictures))

if __name__ == "__main__":
    main()
