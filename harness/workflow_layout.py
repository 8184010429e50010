"""The example workflows laid out for people: left to right, one group per stage (photos, correspondence,
edit, results), and a Note naming the model files and what to change. Computed from the API file and
the node sizes the editor gave each node, so `./edicho workflows` rewrites the same layout every time."""
STAGES = (("Photos", "#3f789e"), ("Correspondence", "#8A8"), ("Edit", "#b58b2a"), ("Results", "#a1309b"))
STAGE_OF = {"LoadImage": "Photos", "EdichoBatchImages": "Photos",
            "EdichoFeatureExtractor": "Correspondence", "EdichoMatcher": "Correspondence",
            "EdichoCorrespondencePreview": "Correspondence",
            "EdichoRestoreImages": "Results", "SaveImage": "Results", "PreviewImage": "Results"}
OUTPUTS = ("SaveImage", "PreviewImage")
NODE_TITLE = 30  # litegraph draws a node's title bar above its position
GROUP_TITLE = 50
PAD, GAP_X, GAP_Y, GAP_STAGE = 20, 50, 40, 80
NOTE_SIZE = (420, 330)
STAGE_HEIGHT = 1100  # a stage's columns wrap at this height, so that the graph stays about twice as wide as tall
# Where each model file goes (the loader input that names it).
MODEL_FOLDERS = {("CheckpointLoaderSimple", "ckpt_name"): "models/checkpoints",
                 ("UNETLoader", "unet_name"): "models/diffusion_models", ("VAELoader", "vae_name"): "models/vae",
                 ("CLIPLoader", "clip_name"): "models/text_encoders",
                 ("DualCLIPLoader", "clip_name1"): "models/text_encoders",
                 ("DualCLIPLoader", "clip_name2"): "models/text_encoders",
                 ("ControlNetLoader", "control_net_name"): "models/controlnet"}
WHAT_TO_CHANGE = {
    "edicho_controlnet": "the prompt (the new look) and the ControlNet strength",
    "edicho_exemplar": "the exemplar photo (the object to put in) and the region painted on the reference "
                       "(Load Image > Open in MaskEditor)",
    "edicho_flux2_klein": "the instruction; for Klein 4B, distilled or dev see the README",
    "edicho_img2img": "the prompt and KSampler's denoise (how far the edit goes)",
    "edicho_inpaint": "the region to edit: paint it on the reference (Load Image > Open in MaskEditor), then "
                      "the prompt",
    "edicho_ip2p": "the instruction",
    "edicho_kontext": "the instruction",
    "edicho_qwen_edit": "the instruction",
}


def _links(api):
    """(from_id, to_id) for every link of the API graph."""
    return [(value[0], key) for key, node in api.items() for value in node["inputs"].values()
            if isinstance(value, list) and len(value) == 2 and value[0] in api]


def stages(api):
    """The stage of each API node: by its class; an output shows what feeds it; a node that feeds the
    correspondence alone (e.g. the checkpoint and prompt only the extractor reads) joins it."""
    stage = {key: STAGE_OF.get(node["class_type"], "Edit") for key, node in api.items()}
    links = _links(api)
    for source, target in links:
        if api[target]["class_type"] in OUTPUTS and stage[source] == "Correspondence":
            stage[target] = "Correspondence"
    changed = True
    while changed:
        changed = False
        for key, node in api.items():
            if node["class_type"] in STAGE_OF:
                continue
            fed = {stage[t] for s, t in links if s == key}
            if fed == {"Correspondence"} != {stage[key]}:
                stage[key], changed = "Correspondence", True
    return stage


def _depths(keys, links):
    """Depth of each node within its stage: the longest chain of links inside the stage leading to it."""
    inside = [(s, t) for s, t in links if s in keys and t in keys]
    depth = dict.fromkeys(keys, 0)
    for _ in keys:
        for source, target in inside:
            depth[target] = max(depth[target], depth[source] + 1)
    return depth


def _columns(keys, links, sizes):
    """The stage's nodes in columns, upstream first, each column at most STAGE_HEIGHT tall (a chain wraps)."""
    depth = _depths(keys, links)
    columns, height = [[]], 0
    for key in sorted(keys, key=lambda k: (depth[k], keys.index(k))):
        tall = sizes[key][1] + NODE_TITLE + GAP_Y
        if columns[-1] and height + tall > STAGE_HEIGHT:
            columns.append([])
            height = 0
        columns[-1].append(key)
        height += tall
    return columns


def note_text(name, api):
    files = sorted({(MODEL_FOLDERS[node["class_type"], field], value) for node in api.values()
                    for field, value in node["inputs"].items() if (node["class_type"], field) in MODEL_FOLDERS})
    lines = [f"{name}: Edicho edits every photo the same way (comfyui-edicho).", "", "Model files:"]
    lines += [f"- {value}  ({folder}/)" for folder, value in files]
    lines += ["", "Load your photos in the Photos group: the first is the reference the others follow.",
              f"Change: {WHAT_TO_CHANGE[name]}.", "", "Each node's help (?) says what its inputs do."]
    return "\n".join(lines)


def lay_out(workflow, api, name):
    """`workflow` (UI format, node ids 1.. in the API file's order) laid out by stage, with groups and a Note."""
    keys = list(api)
    by_key = {key: node for key, node in zip(keys, sorted(workflow["nodes"], key=lambda n: n["id"]))}
    stage, links = stages(api), _links(api)
    x, top = NOTE_SIZE[0] + GAP_STAGE, 0
    groups = []
    for title, color in STAGES:
        members = [key for key in keys if stage[key] == title]
        if not members:
            continue
        left = x + PAD
        for in_column in _columns(members, links, {key: by_key[key]["size"] for key in members}):
            y = top + GROUP_TITLE + NODE_TITLE
            for key in in_column:
                by_key[key]["pos"] = [left, y]
                y += by_key[key]["size"][1] + NODE_TITLE + GAP_Y
            left += max(by_key[key]["size"][0] for key in in_column) + GAP_X
        bottom = max(by_key[key]["pos"][1] + by_key[key]["size"][1] for key in members) + PAD
        groups.append({"id": len(groups) + 1, "title": title, "bounding": [x, top, left - GAP_X + PAD - x, bottom - top],
                       "color": color, "font_size": 24, "flags": {}})
        x = left - GAP_X + PAD + GAP_STAGE
    note_id = max(node["id"] for node in workflow["nodes"]) + 1
    workflow["nodes"].append({
        "id": note_id, "type": "Note", "pos": [0, top + GROUP_TITLE + NODE_TITLE], "size": list(NOTE_SIZE),
        "flags": {}, "order": len(workflow["nodes"]), "mode": 0, "inputs": [], "outputs": [], "properties": {},
        "widgets_values": [note_text(name, api)], "color": "#432", "bgcolor": "#653"})
    workflow["last_node_id"] = max(workflow.get("last_node_id", 0), note_id)
    workflow["groups"] = groups
    width = x - GAP_STAGE
    height = max(g["bounding"][1] + g["bounding"][3] for g in groups)
    # Opened in a 1600 x 1000 window, the whole graph shows.
    scale = round(min(1.0, 1560 / width, 900 / height), 3)
    workflow.setdefault("extra", {})["ds"] = {"scale": scale, "offset": [20 / scale, 60 / scale]}
    return workflow
