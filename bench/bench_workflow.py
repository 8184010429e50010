"""What Edicho costs in a whole workflow: plain batch sampling vs feature extraction + matching +
sampling with both patches, with the paper's defaults (Edicho Apply's), side by side in one run.

    ./edicho python bench/bench_workflow.py [--family sd15-full] [--size 512] [--batch 4] [--steps 20 50]
    ./edicho python bench/bench_workflow.py --size 768 --steps      # extraction and matching only

Random-weight checkpoint with the real layout, the host's own sampler (euler, cfg 7). The extractor
batches its 8 noise draws as free memory allows; the time per image is what DIFT reports (203 ms per
768 px image on an A6000, SD2.1, ensemble 8). Random weights match few cells (the mutual check
rejects the rest), so Corr-Attention runs with few valid cells here: its cost at given valid fractions
is bench_patch_overhead.py's. Edicho's patches are active on their default range (8% to 80%).
Prints the extraction figures and a markdown table.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

HARNESS = Path(__file__).resolve().parents[1] / "harness"
sys.path.insert(0, str(HARNESS))


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", default="sd15-full")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", nargs="*", type=int, default=[20, 50], help="none: extraction and matching only")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of plain then Edicho; the best of each counts")
    return parser.parse_args()


def main():
    args = parse_args()
    import host
    import tiny_checkpoints

    booted = host.start_host(base_directory=tempfile.mkdtemp(prefix="edicho-bench-"))
    import importlib

    import comfy.sample
    import comfy.sd
    import torch

    def pack(name):
        return importlib.import_module(f"{booted.pack_module.__name__}.{name}")

    fe, matcher, types = pack("nodes.feature_extractor"), pack("nodes.matcher"), pack("nodes.types")
    warp, fuser, paper = pack("nodes.attention_warp"), pack("nodes.noise_fuser"), pack("nodes.apply").PAPER
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_patch_overhead import group_of

    path = tiny_checkpoints.ensure_checkpoint(args.family, Path.home() / ".cache" / "comfyui-edicho" / "checkpoints")
    model, clip, vae, *_ = comfy.sd.load_checkpoint_guess_config(str(path))
    positive = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat"))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    images = group_of(args.size, args.batch)
    latent = vae.encode(images)
    noise = comfy.sample.prepare_noise(latent, 0)

    def timed(work):
        start = time.perf_counter()
        out = work()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - start, out

    def sample(m, steps):
        return comfy.sample.sample(m, noise, steps, 7.0, "euler", "normal", positive, negative, latent,
                                   denoise=1.0, disable_pbar=True, seed=0)

    def correspondence():
        features, grid, level = fe.extract_features(model, vae, images, fe.empty_conditioning(model), paper["timestep"],
                                                    paper["up_level"], paper["ensemble"], 0)
        return types.DiftFeatures(features, tuple(images.shape[1:3]), grid, level, paper["timestep"])

    def patched(corr):
        m = warp.apply_attention_warp(model, corr, "output", paper["start_percent"], paper["end_percent"], 1.0, "warp")
        return fuser.apply_noise_fuser(m, corr, paper["lam"], paper["gamma"], paper["start_percent"],
                                       paper["end_percent"], 0, "literal")

    per_call = fe.fitting_draws(model, latent.shape, paper["ensemble"])
    best = {}

    def keep(name, value):
        best[name] = min(best.get(name, float("inf")), value)

    with torch.inference_mode():
        sample(model, 1)  # loads the model: not part of either workflow's cost
        for _ in range(args.repeats):
            extract, features = timed(correspondence)
            match, corr = timed(lambda: matcher.build_correspondence(features, 0, True, 0.0, 512))
            keep("extract", extract)
            keep("match", match)
            for steps in args.steps:
                keep(("plain", steps), timed(lambda: sample(model, steps))[0])
                keep(("edicho", steps), timed(lambda: sample(patched(corr), steps))[0])
    valid = corr.valid.float().sum().item() / ((args.batch - 1) * corr.valid.shape[1])
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\ndevice: {device}; {args.family}, {args.size}x{args.size}, batch {args.batch}; best of {args.repeats}")
    print(f"extraction (ensemble {paper['ensemble']}, calls of up to {per_call} draws): {best['extract']:.2f} s, "
          f"{1000 * best['extract'] / args.batch:.0f} ms per image; matching: {best['match']:.2f} s; "
          f"valid target cells: {valid:.0%}")
    if args.steps:
        print("| steps | plain s | Edicho sampling s | Edicho total s (extract + match + sampling) | total ratio | "
              "sampling ratio |")
        print("|---|---|---|---|---|---|")
    for steps in args.steps:
        plain, edicho = best[("plain", steps)], best[("edicho", steps)]
        total = best["extract"] + best["match"] + edicho
        print(f"| {steps} | {plain:.2f} | {edicho:.2f} | {total:.2f} | {total / plain:.3f}x | {edicho / plain:.3f}x |")

if __name__ == "__main__":
    main()
