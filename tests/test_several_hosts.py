"""A large group spread over several ComfyUI instances through the host's own API, as the README
shows: the same workflow queued on each real server with its own `only_group`."""
import json
import time
import urllib.request

import pytest

import editor
import sample_photos
from conftest import CACHE
from graphs import edicho_img2img


def _post(url, workflow):
    request = urllib.request.Request(url + "prompt", json.dumps({"prompt": workflow}).encode(),
                                     {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request).read())["prompt_id"]


def _wait_for(url, prompt_id, timeout=240):
    for _ in range(timeout * 2):
        history = json.loads(urllib.request.urlopen(f"{url}history/{prompt_id}").read())
        if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
            return history[prompt_id]
        time.sleep(0.5)
    pytest.fail(f"prompt {prompt_id} did not finish in {timeout} s")


def _home(tmp_path, name, checkpoint):
    home = tmp_path / name
    (home / "models" / "checkpoints").mkdir(parents=True)
    (home / "models" / "checkpoints" / checkpoint.name).symlink_to(checkpoint)
    return home, sample_photos.write_sample_group(home / "input", 256)


def test_each_instance_runs_its_own_group(host, tmp_path):
    import tiny_checkpoints

    checkpoint = tiny_checkpoints.ensure_checkpoint("sd15", CACHE / "checkpoints")
    homes = [_home(tmp_path, f"instance-{i}", checkpoint) for i in range(2)]
    workflow = edicho_img2img(checkpoint.name, homes[0][1], steps=2)
    workflow["images"]["inputs"]["group_size"] = 2
    workflow["restore"] = {"class_type": "EdichoRestoreImages", "inputs": {"images": ["decode", 0],
                                                                           "layout": ["images", 2], "paste": False}}
    workflow["save_restored"] = {"class_type": "SaveImage", "inputs": {"images": ["restore", 0],
                                                                       "filename_prefix": "edicho/restored"}}
    with editor.serve(host.path, homes[0][0]) as first, editor.serve(host.path, homes[1][0]) as second:
        queued = []
        for group, url in enumerate([first, second]):
            workflow["images"]["inputs"]["only_group"] = group
            queued.append((url, _post(url, workflow)))
        runs = [_wait_for(url, prompt_id) for url, prompt_id in queued]
    for run in runs:
        assert run["status"]["status_str"] == "success", run["status"]
    saved = [[image["filename"] for image in run["outputs"]["save_restored"]["images"]] for run in runs]
    # Three photos in groups of 2: [reference, photo 2] on the first, [reference, photo 3] on the
    # second, which gives back only photo 3 (its reference is a copy for consistency).
    assert [len(names) for names in saved] == [2, 1]
    assert [len(run["outputs"]["save_edit"]["images"]) for run in runs] == [2, 2]
