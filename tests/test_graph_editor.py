"""The real graph editor: the host's server serves its own frontend, headless Chromium opens it,
loads every example workflow, and the Edicho nodes must be known and render with their inputs; the
server serves each node's help page where the frontend fetches it, and the help panel shows it."""
import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

import editor
from conftest import REPO

NODE_PATH = os.environ.get("NODE_PATH", "")
HAVE_BROWSER = bool(shutil.which("chromium") and shutil.which("node")
                    and (Path(NODE_PATH) / "playwright-core").exists())
API = REPO / "workflows" / "api"
API_WORKFLOWS = sorted(API.glob("*.json"))
UI_WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
OUTPUT = REPO / "test-output" / "graph-editor"
HELP = REPO / "web" / "docs"

pytestmark = pytest.mark.skipif(not HAVE_BROWSER, reason="needs Debian's chromium, node and playwright-core "
                                "(./edicho test installs them where it can: root with apt-get, npm)")


# Where the loaders of the API workflows look for the files they name, under the server's base directory.
FILE_INPUTS = {("CheckpointLoaderSimple", "ckpt_name"): "models/checkpoints",
               ("UNETLoader", "unet_name"): "models/diffusion_models", ("VAELoader", "vae_name"): "models/vae",
               ("CLIPLoader", "clip_name"): "models/text_encoders",
               ("DualCLIPLoader", "clip_name1"): "models/text_encoders",
               ("DualCLIPLoader", "clip_name2"): "models/text_encoders",
               ("ControlNetLoader", "control_net_name"): "models/controlnet", ("LoadImage", "image"): "input"}


@pytest.fixture(scope="module")
def editor_home(tmp_path_factory):
    """The server's base directory, with an empty file for each model and photo the API workflows name."""
    home = tmp_path_factory.mktemp("editor-home")
    for path in API_WORKFLOWS:
        for node in json.loads(path.read_text()).values():
            for name, value in node["inputs"].items():
                if (node["class_type"], name) in FILE_INPUTS:
                    (home / FILE_INPUTS[node["class_type"], name]).mkdir(parents=True, exist_ok=True)
                    (home / FILE_INPUTS[node["class_type"], name] / value).touch()
    return home


@pytest.fixture(scope="module", params=["pinned", "newest"])
def editor_url(request, host, editor_home):
    """The host's real server on 127.0.0.1 with the pack installed, first-visit dialogs off; serving the frontend
    the host pins, or the newest on the package index (what a user who updates the frontend gets)."""
    root = None
    if request.param == "newest":
        root = os.environ.get("EDICHO_FRONTEND")
        if not root:
            pytest.fail("EDICHO_FRONTEND is not set: run the tests with `./edicho test`, which installs the newest "
                        "comfyui-frontend-package in its cache")
    with editor.serve(host.path, editor_home, ["--front-end-root", root] if root else ()) as url:
        yield url


def test_server_keeps_its_database_in_its_own_home(editor_url, editor_home):
    # The host's default is <ComfyUI>/user/comfyui.db, in the install whatever --base-directory says.
    assert (editor_home / "user" / "comfyui.db").is_file()


@pytest.fixture(scope="module")
def editor_run(editor_url):
    OUTPUT.mkdir(parents=True, exist_ok=True)
    report = editor.check(editor_url, OUTPUT, [*API_WORKFLOWS, *UI_WORKFLOWS])
    assert report["errors"] == []
    return report


@pytest.fixture(scope="module")
def editor_report(editor_run):
    return {Path(r["workflow"]): r for r in editor_run["results"]}


@pytest.fixture(scope="module")
def grows(editor_url):
    """Whether this host grows Edicho Batch Images' photo and mask sockets (V3 Autogrow)."""
    node = editor.fetch_json(editor_url + "object_info/EdichoBatchImages")["EdichoBatchImages"]
    return "photos" in {**node["input"]["required"], **node["input"].get("optional", {})}


FIXED_SOCKET = re.compile(r"(image|mask)_\d+")


def grown(class_type, name):
    """The prompt key the growing sockets use for a fixed-socket input name of Edicho Batch Images."""
    if class_type != "EdichoBatchImages" or not FIXED_SOCKET.fullmatch(name):
        return name
    return f"{'photos' if name.startswith('image') else 'masks'}.{name}"


def _linked(value, ids):
    return [ids[value[0]], value[1]] if isinstance(value, list) and len(value) == 2 and value[0] in ids else value


@pytest.mark.parametrize("path", [*API_WORKFLOWS, *UI_WORKFLOWS], ids=lambda p: str(p.relative_to(REPO / "workflows")))
def test_example_workflow_loads_in_the_editor_with_no_missing_nodes(editor_report, grows, path):
    result = editor_report[path]
    api = json.loads((API / path.name).read_text())
    assert result["missing"] == [] and not result["missingDialog"], result
    # The UI files also hold a Note (frontend-only, never queued).
    assert result["nodes"] == len(api) + (1 if result["ui"] else 0)
    rendered = {node["type"]: node for node in result["edicho"]}
    assert set(rendered) == {n["class_type"] for n in api.values() if n["class_type"].startswith("Edicho")}
    # Where the sockets grow, an API file's fixed-socket keys land on grown sockets (web/js/batch_images.js);
    # a UI file keeps the sockets it was saved with.
    rename = grows and not result["ui"]
    for node in api.values():
        if node["class_type"].startswith("Edicho"):
            shown = set(rendered[node["class_type"]]["inputs"]) | set(rendered[node["class_type"]]["widgets"])
            expected = {grown(node["class_type"], name) if rename else name for name in node["inputs"]}
            assert expected <= shown, (node["class_type"], shown)
    # No seed of the pack randomises itself after each run: the correspondence must stay put.
    assert all("control_after_generate" not in n["widgets"] for n in result["edicho"])
    assert Path(result["screenshot"]).stat().st_size > 10_000


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_ui_workflow_queues_exactly_its_api_twin(editor_report, path):
    # The editor turns the UI file back into the prompt it would queue: it must be the API file's graph.
    api = json.loads((API / path.name).read_text())
    ids = {key: str(i + 1) for i, key in enumerate(api)}
    expected = {ids[key]: {"class_type": node["class_type"],
                           "inputs": {name: _linked(v, ids) for name, v in node["inputs"].items()}}
                for key, node in api.items()}
    queued = {key: {"class_type": node["class_type"], "inputs": node["inputs"]}
              for key, node in editor_report[path]["prompt"].items()}
    assert queued == expected


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=lambda p: p.name)
def test_api_workflow_queues_itself_with_every_link(editor_report, grows, path):
    # Loaded from the API file, the editor queues the same graph: no link is lost, fixed-socket photo
    # links included (as grown keys where the sockets grow).
    api = json.loads(path.read_text())
    ids = {key: str(i + 1) for i, key in enumerate(api)}
    expected = {ids[key]: {"class_type": node["class_type"],
                           "inputs": {grown(node["class_type"], name) if grows else name: _linked(v, ids)
                                      for name, v in node["inputs"].items()}}
                for key, node in api.items()}
    queued = {key: {"class_type": node["class_type"], "inputs": node["inputs"]}
              for key, node in editor_report[path]["prompt"].items()}
    assert queued == expected


def test_batch_images_sockets_grow_as_photos_are_connected(editor_run, editor_report, grows):
    if not grows:
        pytest.skip("this host has no V3 Autogrow: Edicho Batch Images keeps its fixed sockets (next test)")
    fresh = {node["type"]: node["inputs"] for node in editor_run["fresh"]}["EdichoBatchImages"]
    assert [n for n in fresh if n.startswith(("photos.", "masks."))] == ["photos.image_1", "masks.mask_1"]
    assert not any(FIXED_SOCKET.fullmatch(n) for n in fresh)
    # A loaded graph with three photos shows them and one empty socket for a fourth.
    api = json.loads((API / "edicho_img2img.json").read_text())
    photos = [n for node in api.values() if node["class_type"] == "EdichoBatchImages" for n in node["inputs"]
              if n.startswith("image_")]
    rendered = {n["type"]: n for n in editor_report[API / "edicho_img2img.json"]["edicho"]}["EdichoBatchImages"]
    shown = [n for n in rendered["inputs"] if n.startswith("photos.")]
    assert shown == [f"photos.image_{i}" for i in range(1, len(photos) + 2)]


def test_batch_images_keeps_its_fixed_sockets_where_the_host_cannot_grow_them(editor_run, grows):
    if grows:
        pytest.skip("this host grows the sockets (previous test)")
    fresh = {node["type"]: node["inputs"] for node in editor_run["fresh"]}["EdichoBatchImages"]
    assert [n for n in fresh if FIXED_SOCKET.fullmatch(n)] == \
        [f"image_{i}" for i in range(1, 9)] + [f"mask_{i}" for i in range(1, 9)]


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_server_serves_each_templates_thumbnail_where_the_template_browser_fetches_it(editor_url, path):
    # The template browser asks for <api>/workflow_templates/<pack>/<name>.jpg.
    with urllib.request.urlopen(f"{editor_url}api/workflow_templates/comfyui-edicho/{path.stem}.jpg") as response:
        assert response.headers["Content-Type"] == "image/jpeg"
        assert response.read()[:3] == b"\xff\xd8\xff"


def test_template_browser_lists_each_ui_workflow_once(editor_url):
    with urllib.request.urlopen(editor_url + "workflow_templates") as response:
        templates = json.loads(response.read())
    assert sorted(templates["comfyui-edicho"]) == sorted(p.stem for p in UI_WORKFLOWS)


def _get(url):
    with urllib.request.urlopen(url) as response:
        return response.read(), response.headers.get_content_type()


def test_server_serves_every_pack_nodes_help_page_where_the_frontend_fetches_it(editor_url):
    with urllib.request.urlopen(editor_url + "object_info") as response:
        object_info = json.loads(response.read())
    pack_nodes = {name: info for name, info in object_info.items() if name.startswith("Edicho")}
    assert sorted(pack_nodes) == sorted(p.stem for p in HELP.glob("*.md"))
    for name, info in pack_nodes.items():
        # The frontend's NodeHelpService: custom_nodes.<pack>[@version] -> /extensions/<pack>/docs/<name>.md.
        pack = info["python_module"].split(".")[1].split("@")[0]
        page, _ = _get(f"{editor_url}extensions/{pack}/docs/{name}.md")
        assert page == (HELP / f"{name}.md").read_bytes()
        for picture in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", page.decode()):
            body, kind = _get(f"{editor_url}extensions/{pack}/docs/{picture}")
            assert kind.startswith("image/") and body == (HELP / picture).read_bytes()


def test_node_help_panel_shows_the_nodes_page_and_its_picture(editor_url):
    OUTPUT.mkdir(parents=True, exist_ok=True)
    # The page's first paragraph, as the panel renders it (one line).
    page = (HELP / "EdichoMatcher.md").read_text()
    first_paragraph = " ".join(page.split("\n\n")[1].split())
    report = editor.help_panel(editor_url, OUTPUT, REPO / "workflows" / "edicho_img2img.json", "EdichoMatcher",
                               first_paragraph)
    assert report["selected"] and report["found"], report
    assert report["errors"] == []
    shown = [p for p in report["pictures"]
             if p["src"].endswith("/extensions/comfyui-edicho/docs/correspondence-preview.jpg")]
    assert shown and shown[0]["width"] > 0, report["pictures"]


def test_comfy_lint_finds_every_api_workflow_clean_against_the_servers_object_info(editor_url, grows, tmp_path):
    tools = os.environ.get("EDICHO_TOOLS")
    if not tools:
        pytest.fail("EDICHO_TOOLS is not set: run the tests with `./edicho test`, which installs comfy-lint")
    # The pack loaded and every model and photo the workflows name present: the /object_info of a user's ComfyUI.
    schema = tmp_path / "object_info.json"
    run = subprocess.run([str(Path(tools) / "comfy-lint"), "--server", editor_url.rstrip("/"),
                          "--schema-cache", str(schema), "--strict", "--json", "--color", "never",
                          *map(str, API_WORKFLOWS)],
                         capture_output=True, text=True, timeout=120)
    diagnostics = [d for f in json.loads(run.stdout)["files"] for d in f["diagnostics"]]
    # comfy-lint 0.1.0 knows no growing inputs: where the sockets grow, it takes the fixed-socket keys the
    # node still accepts (test_batch_images runs them) for extraneous. Nothing else may be reported.
    accepted = [d for d in diagnostics if grows and d["rule"] == "extraneous-input"
                and d["class_type"] == "EdichoBatchImages" and FIXED_SOCKET.fullmatch(d["field"])]
    assert [d for d in diagnostics if d not in accepted] == [], run.stdout[-4000:] + run.stderr[-2000:]
    assert run.returncode == (1 if accepted else 0), run.stdout[-4000:] + run.stderr[-2000:]
    assert "EdichoMatcher" in json.loads(schema.read_text())
