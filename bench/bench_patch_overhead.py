"""Sampling time with both Edicho patches vs the unpatched model, side by side in one run.

    ./edicho python bench/bench_patch_overhead.py [--families sd15 sd15-full sdxl sdxl-full] [--size 512] [--batch 4] [--steps 4]

Random-weight checkpoints with the real layout (tiny and full-size SD1.5 and SDXL), the host's own
sampler (euler, cfg 7), both patches active on every step (worst case). Prints a markdown table.
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
    parser.add_argument("--families", nargs="+", default=["sd15", "sd15-full"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="alternations of an unpatched and a patched block")
    parser.add_argument("--block", type=int, default=2, help="timed calls per block")
    return parser.parse_args()


def group_of(size, batch):
    import torch

    import sample_photos

    views = sample_photos.sample_group(size)
    return torch.cat([views, views.flip(2)])[:batch]


def gpu_time(run, model):
    """Seconds the GPU spent in kernels during one sampling call (torch profiler), after a warm call."""
    import torch

    with torch.inference_mode():
        run(model)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
            run(model)
    return sum(event.self_device_time_total for event in profile.key_averages()) / 1e6


def main():
    args = parse_args()
    import host
    import tiny_checkpoints

    booted = host.start_host(base_directory=tempfile.mkdtemp(prefix="edicho-bench-"))
    import importlib

    import comfy.model_management as mm
    import comfy.sample
    import comfy.sd
    import torch

    def pack(name):
        return importlib.import_module(f"{booted.pack_module.__name__}.{name}")

    fe, matcher = pack("nodes.feature_extractor"), pack("nodes.matcher")
    warp, fuser = pack("nodes.attention_warp"), pack("nodes.noise_fuser")
    rows = []
    for family in args.families:
        path = tiny_checkpoints.ensure_checkpoint(family, Path.home() / ".cache" / "comfyui-edicho" / "checkpoints")
        model, clip, vae, *_ = comfy.sd.load_checkpoint_guess_config(str(path))
        positive = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat"))
        negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        images = group_of(args.size, args.batch)
        feats, latent_grid, level = fe.extract_features(model, vae, images, fe.empty_conditioning(model), 261, fe.AUTO, 1, 0)
        features = pack("nodes.types").DiftFeatures(feats, tuple(images.shape[1:3]), latent_grid, level, 261)
        corr = matcher.build_correspondence(features, 0, True, 0.0, 512)
        patched = warp.apply_attention_warp(model, corr, "output", 0.0, 1.0, 1.0, "warp")
        patched = fuser.apply_noise_fuser(patched, corr, 0.8, 0.9, 0.0, 1.0, 0, "literal")
        latent = vae.encode(images)
        noise = comfy.sample.prepare_noise(latent, 0)

        def run(m):
            start = time.perf_counter()
            out = comfy.sample.sample(m, noise, args.steps, 7.0, "euler", "normal", positive, negative, latent,
                                      denoise=1.0, disable_pbar=True, seed=0)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return time.perf_counter() - start, out

        def block(m):
            # Switching between clones makes the host load the model again (tens of ms for SDXL on
            # a GPU), which is not a cost of sampling with Edicho: one untimed call absorbs it.
            run(m)
            return min(run(m)[0] for _ in range(args.block))

        with torch.inference_mode():
            plain_times, patched_times = [], []
            for _ in range(args.repeats):
                plain_times.append(block(model))
                patched_times.append(block(patched))
        plain, edicho = min(plain_times), min(patched_times)
        gpu_ratio = gpu_time(run, patched) / gpu_time(run, model) if torch.cuda.is_available() else None
        rows.append((family, f"{args.size}x{args.size}", args.batch, args.steps, plain, edicho, edicho / plain, gpu_ratio))
        del model, clip, vae, patched
        mm.unload_all_models()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\ndevice: {device}; euler, cfg 7, both patches active on every step; best of {args.repeats} alternating "
          f"blocks of {args.block} calls, each after an untimed call")
    print("| model | size | batch | steps | unpatched s | Edicho s | ratio | GPU time ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for family, size, batch, steps, plain, edicho, ratio, gpu_ratio in rows:
        gpu = "-" if gpu_ratio is None else f"{gpu_ratio:.3f}x"
        print(f"| {family} | {size} | {batch} | {steps} | {plain:.2f} | {edicho:.2f} | {ratio:.3f}x | {gpu} |")


if __name__ == "__main__":
    main()
