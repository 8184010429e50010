"""The node library's help pages: the frontend fetches `/extensions/<pack>/docs/<NodeId>.md`, the pack
being the node's python_module `custom_nodes.<install folder>`, and the host mounts the pack's
WEB_DIRECTORY at `/extensions/<install folder>/`. Every registered node has a page that names each of
its inputs and outputs; its pictures lie beside it, small. (tests/test_graph_editor.py fetches the pages
from the real server and opens one in the editor's help panel.)"""
import re
from pathlib import Path

import pytest

from conftest import REPO

WEB = REPO / "web"
DOCS = WEB / "docs"
PICTURE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
MAX_PICTURE_BYTES = 100_000


def test_every_registered_node_has_a_help_page_and_every_page_a_node(host):
    assert sorted(p.stem for p in DOCS.glob("*.md")) == sorted(host.pack_node_ids)


def test_the_host_serves_the_web_directory_under_the_name_the_frontend_derives(host):
    import nodes

    for node_id in host.pack_node_ids:
        # The frontend's extractCustomNodeName: `custom_nodes.<folder>[@version]` -> folder.
        module = host.node_classes[node_id].RELATIVE_PYTHON_MODULE
        assert module.split(".")[0] == "custom_nodes"
        assert Path(nodes.EXTENSION_WEB_DIRS[module.split(".")[1].split("@")[0]]).resolve() == WEB


def _socket_names(node_class):
    """Input names (ids, and display names where set) and output names, as /object_info gives them to the frontend."""
    types = node_class.INPUT_TYPES()
    inputs = set()
    for section in ("required", "optional"):
        for name, spec in types.get(section, {}).items():
            inputs.add(name)
            if len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("display_name"):
                inputs.add(spec[1]["display_name"])
    return inputs, set(node_class.RETURN_NAMES or node_class.RETURN_TYPES)


@pytest.mark.parametrize("node_id", sorted(p.stem for p in DOCS.glob("*.md")))
def test_help_page_names_every_input_and_output_and_the_errors(host, node_id):
    page = (DOCS / f"{node_id}.md").read_text()
    node_class = host.node_classes[node_id]
    assert page.startswith(f"# {node_class.GET_SCHEMA().display_name}\n")
    inputs, outputs = _socket_names(node_class)
    inputs_section = page.split("## Inputs", 1)[1].split("## Outputs", 1)[0]
    outputs_section = page.split("## Outputs", 1)[1].split("## Errors you may see", 1)[0]
    listed = set(re.findall(r"`([^`]+)`", inputs_section))
    # `image_3` … `image_8` stands for the sockets between.
    for prefix, low, high in re.findall(r"`(\w+?_)(\d+)` … `\w+?_(\d+)`", inputs_section):
        listed |= {f"{prefix}{i}" for i in range(int(low), int(high) + 1)}
    assert inputs <= listed, inputs - listed
    assert outputs <= set(re.findall(r"`([^`]+)`", outputs_section)), outputs
    assert "## Errors you may see\n" in page


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.stem)
def test_help_page_pictures_lie_beside_it_and_are_small(page):
    for picture in PICTURE.findall(page.read_text()):
        # The frontend resolves a relative picture against /extensions/<pack>/docs/.
        assert "/" not in picture and (DOCS / picture).is_file(), picture
        assert (DOCS / picture).stat().st_size < MAX_PICTURE_BYTES


def test_every_picture_in_the_web_directory_is_shown_by_a_page():
    shown = {picture for page in DOCS.glob("*.md") for picture in PICTURE.findall(page.read_text())}
    assert {p.name for p in DOCS.iterdir() if p.suffix != ".md"} == shown
