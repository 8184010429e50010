"""Shared workflows name their pack, and the real ComfyUI-Manager finds it.

ComfyUI-Manager's frontend extension (workflow-metadata.js) writes `cnr_id` and `ver` on every node it
creates: the pack's registry id and version, `comfy-core` and the host's version for core nodes; the
frontend's missing-nodes dialog reads them. `./edicho workflows` writes the same (harness/editor.py).

cm-cli 4.3's `deps-in-workflow` reads no `cnr_id`: it maps each node type to a repository through the
Manager channel's extension-node-map.json (offline: the channel's cached copy in the user directory,
else the copy bundled in the package, which does not list this pack). The Manager's scanner builds that
map from NODE_CLASS_MAPPINGS literals, which a V3 pack has none of, or from a pack's node_list.json. So
the test gives cm-cli a channel cache holding the bundled map plus the entry the scanner makes of
node_list.json: what the channel holds once the pack is listed in the Manager's custom-node list.
cm-cli comes from its own virtualenv (`./edicho test` sets $EDICHO_TOOLS); it writes its user folder
into the ComfyUI it is pointed at, so it gets a copy of the host's tree.
"""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

import editor
from conftest import REPO, fresh_comfyui

UI_WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
NODE_LIST = json.loads((REPO / "node_list.json").read_text())
PYPROJECT = (REPO / "pyproject.toml").read_text()
REPOSITORY = re.search(r'^Repository = "([^"]+)"$', PYPROJECT, re.M).group(1)
DISPLAY_NAME = re.search(r'^DisplayName = "([^"]+)"$', PYPROJECT, re.M).group(1)
# Where a pip-installed Manager keeps the channel's node map, under its user directory.
CACHE_NAME = """
import json, os, comfyui_manager
from comfyui_manager.common.manager_util import simple_hash
root = os.path.dirname(comfyui_manager.__file__)
template = open(os.path.join(root, "channels.list.template")).read().split()
channels = dict(line.split("::", 1) for line in template if "::" in line)
print(json.dumps({"cache": f"{simple_hash(channels['default'] + '/extension-node-map.json')}_extension-node-map.json",
                  "bundled": os.path.join(root, "extension-node-map.json")}))
"""


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_ui_workflow_names_the_pack_of_every_node(path):
    for node in json.loads(path.read_text())["nodes"]:
        properties = node["properties"]
        if node["type"] == "Note":
            # The frontend's own node: no pack, and the Manager writes nothing on it.
            assert "cnr_id" not in properties, node
        elif node["type"].startswith("Edicho"):
            assert (properties["cnr_id"], properties["ver"]) == (editor.PACK["name"], editor.PACK["version"]), node
        else:
            assert properties["cnr_id"] == "comfy-core" and re.fullmatch(r"\d+\.\d+\.\d+", properties["ver"]), node


def test_node_list_names_every_registered_node(host):
    assert sorted(NODE_LIST) == sorted(host.pack_node_ids)


@pytest.fixture(scope="module")
def cm_cli(tmp_path_factory):
    """Run `cm-cli deps-in-workflow` on a workflow: its JSON answer."""
    tools = os.environ.get("EDICHO_TOOLS")
    if not tools:
        pytest.fail("EDICHO_TOOLS is not set: run the tests with `./edicho test`, which installs comfyui-manager in "
                    "a virtualenv of its own")
    work = tmp_path_factory.mktemp("manager")
    comfyui = fresh_comfyui(work / "ComfyUI")
    (comfyui / "custom_nodes" / editor.PACK["name"]).symlink_to(REPO, target_is_directory=True)
    env = {**os.environ, "COMFYUI_PATH": str(comfyui), "PYTHONPATH": str(comfyui)}
    where = json.loads(subprocess.run([str(Path(tools) / "python"), "-c", CACHE_NAME], env=env, capture_output=True,
                                      text=True, check=True).stdout)
    node_map = json.loads(Path(where["bundled"]).read_text())
    assert REPOSITORY not in node_map
    # The Manager scanner's entry for a pack with a node_list.json: its node names, sorted, and the list's title.
    node_map[REPOSITORY] = [sorted(NODE_LIST), {"title_aux": DISPLAY_NAME}]
    user = work / "manager-user"
    (user / "cache").mkdir(parents=True)
    (user / "cache" / where["cache"]).write_text(json.dumps(node_map))

    def deps(workflow):
        answer = work / f"{workflow.stem}.deps.json"
        run = subprocess.run([str(Path(tools) / "cm-cli"), "deps-in-workflow", "--workflow", str(workflow),
                              "--output", str(answer), "--mode", "cache", "--user-directory", str(user)],
                             env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and answer.exists(), run.stdout + run.stderr
        return json.loads(answer.read_text())
    return deps


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_manager_cm_cli_finds_this_pack_for_every_edicho_node(cm_cli, path):
    # Core nodes are the map's ComfyUI entry; every other node must be this pack's, installed.
    assert cm_cli(path) == {"custom_nodes": {REPOSITORY: {"state": "installed", "hash": "-"}}, "unknown_nodes": []}
