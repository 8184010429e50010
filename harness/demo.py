"""The main job: a consistent edit of the bundled sample photos through the real host.

With --ckpt (an SD1.x, SD2.x or SDXL checkpoint, or an SD1.x one found in the host's models
folder) it is a real edit; without one, or with --smoke, it runs a tiny random-weight checkpoint:
a smoke run whose images are noise.
"""
import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKFLOW = REPO / "workflows" / "api" / "edicho_img2img.json"
SD15_NAME = re.compile(r"(v1-5|v1\.5|sd15|sd-v1|sd_v1|1\.5)", re.I)

sys.path.insert(0, str(HERE))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--ckpt", help="your SD1.x, SD2.x or SDXL checkpoint: a path, or a file name in the host's "
                                       "models/checkpoints")
    choice.add_argument("--smoke", action="store_true", help="the tiny random-weight checkpoint, even where the "
                                                             "host's models/checkpoints holds an SD1.x one")
    parser.add_argument("--out", default=str(REPO / "edicho-output"), help="folder for the results")
    parser.add_argument("--prompt", help="what the edit should make of the photos")
    parser.add_argument("--steps", type=int, help="sampling steps (default 50 real, 4 smoke)")
    parser.add_argument("--size", type=int, help="image side in pixels (default: the checkpoint's own, 512 for SD1.x, "
                                                 "768 SD2.x, 1024 SDXL; 256 smoke)")
    return parser.parse_args(argv)


def find_user_checkpoint(args):
    """The checkpoint: --ckpt, else an SD1.x-looking file in the user's models folder; None: the tiny one."""
    if args.smoke:
        return None
    if args.ckpt:
        path = Path(args.ckpt).expanduser()
        if path.exists():
            return path.resolve()
        candidate = Path(os.environ["COMFYUI_PATH"]) / "models" / "checkpoints" / args.ckpt
        if candidate.exists():
            return candidate.resolve()
        sys.exit(f"--ckpt {args.ckpt}: no such file (give a path, or a name in $COMFYUI_PATH/models/checkpoints)")
    folder = Path(os.environ["COMFYUI_PATH"]) / "models" / "checkpoints"
    found = sorted(p for p in folder.glob("*") if p.suffix in (".safetensors", ".ckpt") and SD15_NAME.search(p.name))
    return found[0].resolve() if found else None


def native_size(ckpt):
    """The side a checkpoint was trained at, from its text encoder keys: 1024 SDXL, 768 SD2.x, else 512."""
    if ckpt.suffix != ".safetensors":
        return 512
    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as f:
        keys = set(f.keys())
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return 1024
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return 768
    return 512


def main():
    args = parse_args()
    out = Path(args.out).resolve()
    user_ckpt = find_user_checkpoint(args)
    smoke = user_ckpt is None
    size = args.size or (256 if smoke else native_size(user_ckpt))
    steps = args.steps or (4 if smoke else 50)

    import host
    import runner
    import sample_photos
    import tiny_checkpoints

    home = Path(os.environ.get("EDICHO_CACHE", Path.home() / ".cache" / "comfyui-edicho")) / "demo-home"
    if out.exists():
        shutil.rmtree(out / "edicho", ignore_errors=True)
    booted = host.start_host(base_directory=home, extra_args=["--output-directory", str(out)])
    checkpoints = booted.base_directory / "models" / "checkpoints"
    ckpt = user_ckpt or tiny_checkpoints.ensure_checkpoint("sd15", home.parent / "checkpoints")
    link = checkpoints / ckpt.name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(ckpt)

    names = sample_photos.write_sample_group(booted.base_directory / "input", size)
    graph = json.loads(WORKFLOW.read_text())
    for node, name in zip(("load_a", "load_b", "load_c"), names):
        graph[node]["inputs"]["image"] = name
    graph["images"]["inputs"]["megapixels"] = size * size / 1e6
    graph["ckpt"]["inputs"]["ckpt_name"] = ckpt.name
    for sampler in ("sample", "sample_plain"):
        graph[sampler]["inputs"]["steps"] = steps
    if args.prompt:
        graph["positive"]["inputs"]["text"] = args.prompt
    if smoke:
        graph["features"]["inputs"]["ensemble"] = 2
        banner = ("SMOKE RUN: no SD1.x checkpoint given (or --smoke), so this used a tiny RANDOM-WEIGHT checkpoint. "
                  "The images are noise, not an edit; they only show that the whole graph runs. "
                  "Pass --ckpt /path/to/sd15.safetensors for a real edit.")
        print("!" * 100 + "\n" + banner + "\n" + "!" * 100, flush=True)
    print(f"edicho demo: {len(names)} photos at {size}px, {steps} steps, checkpoint {ckpt.name}", flush=True)
    started = time.time()
    runner.run_graph(graph)
    print(f"done in {time.time() - started:.0f} s. Results in {out / 'edicho'}:")
    for path in sorted((out / "edicho").glob("*.png")):
        print(f"  {path}")
    if smoke:
        print("(smoke run: random weights, the images are noise)")


if __name__ == "__main__":
    main()
