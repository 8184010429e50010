"""Small API-format graph builders shared by tests."""


def txt2img(ckpt_name, *, width=256, height=256, batch=3, steps=2, cfg=7.0, sampler="euler",
            scheduler="normal", seed=1, model_node=None):
    """Checkpoint -> KSampler -> VAEDecode -> PreviewImage; `model_node` = [node_id, slot] replaces the model input."""
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": model_node or ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0],
            "latent_image": ["latent", 0], "seed": seed, "steps": steps, "cfg": cfg,
            "sampler_name": sampler, "scheduler": scheduler, "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
        "preview": {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}},
    }


def edicho_img2img(ckpt_name, image_names, *, steps=3, ensemble=1, sampler="euler", scheduler="normal",
                   start_percent=0.0, end_percent=1.0, size=None):
    """The pack's example workflow (workflows/api/edicho_img2img.json), made small for the tiny model.

    `size` = (width, height) centre-crops the reference to that size first, so the batch has it.
    """
    import json
    from pathlib import Path

    graph = json.loads((Path(__file__).resolve().parents[1] / "workflows" / "api" / "edicho_img2img.json").read_text())
    for node, name in zip(("load_a", "load_b", "load_c"), image_names):
        graph[node]["inputs"]["image"] = name
    graph["images"]["inputs"]["megapixels"] = 0.066  # 256x256
    if size is not None:
        graph["reference_crop"] = {"class_type": "ImageScale", "inputs": {
            "image": ["load_a", 0], "upscale_method": "bicubic", "width": size[0], "height": size[1], "crop": "center"}}
        graph["images"]["inputs"].update(image_1=["reference_crop", 0], megapixels=size[0] * size[1] / 1e6)
    graph["ckpt"]["inputs"]["ckpt_name"] = ckpt_name
    graph["features"]["inputs"]["ensemble"] = ensemble
    for node in ("attention", "fuser"):
        graph[node]["inputs"].update(start_percent=start_percent, end_percent=end_percent)
    for node in ("sample", "sample_plain"):
        graph[node]["inputs"].update(steps=steps, sampler_name=sampler, scheduler=scheduler)
    return graph
