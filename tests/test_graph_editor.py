"""The real graph editor: the host's server serves its own frontend, headless Chromium opens it,
loads every example workflow, and the Edicho nodes must be known and render with their inputs."""
import json
import os
import shutil
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

pytestmark = pytest.mark.skipif(not HAVE_BROWSER, reason="needs Debian's chromium, node and playwright-core "
                                "(./edicho test installs them where it can: root with apt-get, npm)")


@pytest.fixture(scope="module")
def editor_url(host, tmp_path_factory):
    """The host's real server on 127.0.0.1 with the pack installed, first-visit dialogs off."""
    with editor.serve(host.path, tmp_path_factory.mktemp("editor-home")) as url:
        yield url


@pytest.fixture(scope="module")
def editor_report(editor_url):
    OUTPUT.mkdir(parents=True, exist_ok=True)
    report = editor.check(editor_url, OUTPUT, [*API_WORKFLOWS, *UI_WORKFLOWS])
    assert report["errors"] == []
    return {Path(r["workflow"]): r for r in report["results"]}


def _linked(value, ids):
    return [ids[value[0]], value[1]] if isinstance(value, list) and len(value) == 2 and value[0] in ids else value


@pytest.mark.parametrize("path", [*API_WORKFLOWS, *UI_WORKFLOWS], ids=lambda p: str(p.relative_to(REPO / "workflows")))
def test_example_workflow_loads_in_the_editor_with_no_missing_nodes(editor_report, path):
    result = editor_report[path]
    api = json.loads((API / path.name).read_text())
    assert result["missing"] == [] and not result["missingDialog"], result
    assert result["nodes"] == len(api)
    rendered = {node["type"]: node for node in result["edicho"]}
    assert set(rendered) == {n["class_type"] for n in api.values() if n["class_type"].startswith("Edicho")}
    for node in api.values():
        if node["class_type"].startswith("Edicho"):
            shown = set(rendered[node["class_type"]]["inputs"]) | set(rendered[node["class_type"]]["widgets"])
            assert set(node["inputs"]) <= shown, (node["class_type"], shown)
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


def test_template_browser_lists_each_ui_workflow_once(editor_url):
    with urllib.request.urlopen(editor_url + "workflow_templates") as response:
        templates = json.loads(response.read())
    assert sorted(templates["comfyui-edicho"]) == sorted(p.stem for p in UI_WORKFLOWS)
