"""The example workflows as people open them: left to right, one group per stage, a Note naming the model
files, a template thumbnail each; and `./edicho workflows` writes the same layout again."""
import copy
import json

import pytest

import workflow_layout
from conftest import REPO

API = REPO / "workflows" / "api"
UI_WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))


def _box(node):
    return (node["pos"][0], node["pos"][1] - workflow_layout.NODE_TITLE,
            node["pos"][0] + node["size"][0], node["pos"][1] + node["size"][1])


def _inside(box, bounding):
    x, y, w, h = bounding
    return x <= box[0] and y <= box[1] and box[2] <= x + w and box[3] <= y + h


def _pairs(nodes, api):
    """(API key, UI node) in the API file's order; the UI ids are 1.. in that order."""
    by_id = {node["id"]: node for node in nodes}
    return [(key, by_id[i + 1]) for i, key in enumerate(api)]


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_each_node_sits_in_its_stages_group_left_to_right_without_overlap(path):
    workflow, api = json.loads(path.read_text()), json.loads((API / path.name).read_text())
    groups = workflow["groups"]
    titles = [g["title"] for g in groups]
    assert titles == [t for t, _ in workflow_layout.STAGES if t in titles] and {"Photos", "Edit"} <= set(titles)
    lefts = [g["bounding"][0] for g in groups]
    assert all(a[0] + a[2] < b for a, b in zip((g["bounding"] for g in groups), lefts[1:]))
    stage = workflow_layout.stages(api)
    pairs = _pairs(workflow["nodes"], api)
    for key, node in pairs:
        holding = [g["title"] for g in groups if _inside(_box(node), g["bounding"])]
        assert holding == [stage[key]], (node["type"], holding, stage[key])
    boxes = [_box(node) for node in workflow["nodes"]]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    # Upstream on the left: within a stage no link runs right to left.
    position = {key: node["pos"][0] for key, node in pairs}
    for source, target in workflow_layout._links(api):
        if stage[source] == stage[target]:
            assert position[source] <= position[target], (api[source]["class_type"], api[target]["class_type"])


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_the_note_names_every_model_file_and_what_to_change(path):
    workflow, api = json.loads(path.read_text()), json.loads((API / path.name).read_text())
    notes = [node for node in workflow["nodes"] if node["type"] == "Note"]
    assert len(notes) == 1
    text = notes[0]["widgets_values"][0]
    named = [value for node in api.values() for field, value in node["inputs"].items()
             if (node["class_type"], field) in workflow_layout.MODEL_FOLDERS]
    assert named and all(name in text for name in named)
    assert "Change: " in text and "reference" in text


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_regenerating_keeps_the_layout(path):
    # What ./edicho workflows does to the editor's fresh export: the same positions, groups and Note.
    workflow, api = json.loads(path.read_text()), json.loads((API / path.name).read_text())
    fresh = copy.deepcopy(workflow)
    fresh["nodes"] = [node for node in fresh["nodes"] if node["type"] != "Note"]
    for node in fresh["nodes"]:
        node["pos"] = [0, 0]
    fresh["groups"] = []
    assert workflow_layout.lay_out(fresh, api, path.stem) == workflow


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_each_workflow_has_a_small_template_thumbnail(path):
    thumbnail = path.with_suffix(".jpg")
    data = thumbnail.read_bytes()
    assert data[:3] == b"\xff\xd8\xff" and len(data) < 100_000
