"""A large group spread over several ComfyUI instances through the host's own API, as the README
shows: the same workflow queued on each real server with its own `only_group`."""
import editor
from conftest import CACHE, server_home
from graphs import edicho_img2img


def test_each_instance_runs_its_own_group(host, tmp_path):
    import tiny_checkpoints

    checkpoint = tiny_checkpoints.ensure_checkpoint("sd15", CACHE / "checkpoints")
    homes = [tmp_path / f"instance-{i}" for i in range(2)]
    photos = [server_home(home, checkpoint) for home in homes]
    workflow = edicho_img2img(checkpoint.name, photos[0], steps=2)
    workflow["images"]["inputs"]["group_size"] = 2
    workflow["restore"] = {"class_type": "EdichoRestoreImages", "inputs": {"images": ["decode", 0],
                                                                           "layout": ["images", 2], "paste": False}}
    workflow["save_restored"] = {"class_type": "SaveImage", "inputs": {"images": ["restore", 0],
                                                                       "filename_prefix": "edicho/restored"}}
    with editor.serve(host.path, homes[0]) as first, editor.serve(host.path, homes[1]) as second:
        queued = []
        for group, url in enumerate([first, second]):
            workflow["images"]["inputs"]["only_group"] = group
            queued.append((url, editor.queue_prompt(url, workflow)))
        runs = [editor.wait_for_prompt(url, prompt_id) for url, prompt_id in queued]
    for run in runs:
        assert run["status"]["status_str"] == "success", run["status"]
    saved = [[image["filename"] for image in run["outputs"]["save_restored"]["images"]] for run in runs]
    # Three photos in groups of 2: [reference, photo 2] on the first, [reference, photo 3] on the
    # second, which gives back only photo 3 (its reference is a copy for consistency).
    assert [len(names) for names in saved] == [2, 1]
    assert [len(run["outputs"]["save_edit"]["images"]) for run in runs] == [2, 2]
