"""Sampling time with both Edicho patches vs the unpatched model, side by side in one run.

    ./edicho python bench/bench_patch_overhead.py [--families sd15 sd15-full sdxl sdxl-full] [--size 512]
        [--batch 4] [--steps 4] [--valid 1.0 0.9 0.5]

Random-weight checkpoints with the real layout (tiny and full-size SD1.5 and SDXL; tiny Flux dev,
`flux-dev`, and SD3.5 Medium's shape, `sd35-medium`, with the tiny SD1.x's CLIP-L for text and the
TAEF1-layout VAE; the smallest Qwen-Image the host's loader takes, `qwen-image` (one 3072-wide
block), with random 3584-wide text and the tiny Wan 2.1 VAE; the tiny FLUX.2 Klein and dev, `flux2-klein`,
`flux2-dev`, loader-detected where the host detects them at that size (0.33) and else the host's own
class built at that size from the same state dict (0.3.75), on random 128-channel latents at 1/16), the host's own
sampler (euler, cfg 7: Flux runs Corr-CFG in flow space too), both patches active on every step (worst case). Corr-Attention runs on random
correspondences with exactly the given fractions of valid target cells (fixed seed), on its default
packed path, and once on the gather path (every target row attends, as before the packed path) for
comparison. Prints markdown tables: seconds and the ratio to unpatched.
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
    parser.add_argument("--valid", nargs="+", type=float, default=[1.0, 0.9, 0.5],
                        help="fractions of valid target cells of the random correspondences")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of one block per model")
    parser.add_argument("--block", type=int, default=2, help="timed calls per block")
    return parser.parse_args()


def group_of(size, batch):
    import torch

    import sample_photos

    views = sample_photos.sample_group(size)
    return torch.cat([views, views.flip(2)])[:batch]


def random_correspondence(Correspondence, batch, grid, valid, seed=0, ratio=8):
    """Reference 0; each target matches random reference cells, exactly round(valid * cells) of them valid; on the
    latent `grid` of images `ratio` px per cell."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    cells = grid[0] * grid[1]
    index = torch.randint(0, cells, (batch, cells), generator=generator)
    rank = torch.rand(batch, cells, generator=generator).argsort(dim=1).argsort(dim=1)
    mask = rank < round(valid * cells)
    mask[0] = False
    index[0] = torch.arange(cells)
    return Correspondence(index, mask, torch.ones(batch, cells), tuple(grid), 0, (grid[0] * ratio, grid[1] * ratio))


def load_family(family):
    """(model, clip, vae) of a tiny or full-size family; a DiT gets the tiny SD1.x's CLIP-L and the TAEF1 VAE,
    Qwen-Image no CLIP (its text encoder can't be built small) and the tiny Wan 2.1 VAE."""
    import comfy.sd
    import comfy.utils

    import tiny_checkpoints

    def path(name):
        return str(tiny_checkpoints.ensure_checkpoint(name, Path.home() / ".cache" / "comfyui-edicho" / "checkpoints"))

    if "dit" not in tiny_checkpoints.FAMILIES[family]:
        return comfy.sd.load_checkpoint_guess_config(path(family))[:3]
    clip = comfy.sd.load_checkpoint_guess_config(path("sd15"))[1]
    if family.startswith("flux2"):
        return flux2_model(family, path), clip, None
    model = comfy.sd.load_diffusion_model(path(family))
    if family == "qwen-image":
        return model, None, comfy.sd.VAE(sd=comfy.utils.load_torch_file(path("wan21-vae")))
    return model, clip, comfy.sd.VAE(sd=comfy.utils.load_torch_file(path("taef1")))


def flux2_model(family, path):
    """The tiny FLUX.2 through the loader, or where this host does not detect that size, its own class built from
    the same config and state dict."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models
    import comfy.utils

    import tiny_checkpoints

    if tiny_checkpoints.host_detects(family):
        return comfy.sd.load_diffusion_model(path(family))
    model = comfy.supported_models.Flux2(tiny_checkpoints.family_spec(family)["dit"]).get_model({})
    model.diffusion_model.load_state_dict(comfy.utils.load_torch_file(path(family)))
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model.to(device), device, comfy.model_management.unet_offload_device())


def conditioning(clip, text):
    """CLIP-encoded `text`, or random Qwen2.5-VL-wide text (3584) where there is no CLIP."""
    import torch

    if clip is None:
        return [[torch.randn(1, 16, 3584, generator=torch.Generator().manual_seed(len(text))), {}]]
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


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

    booted = host.start_host(base_directory=tempfile.mkdtemp(prefix="edicho-bench-"))
    import importlib

    import comfy.model_management as mm
    import comfy.sample
    import torch

    def pack(name):
        return importlib.import_module(f"{booted.pack_module.__name__}.{name}")

    Correspondence = pack("kernels.correspondence").Correspondence
    warp, fuser = pack("nodes.attention_warp"), pack("nodes.noise_fuser")
    columns = ["gather path"] + [f"{valid:.0%} valid" for valid in args.valid]
    rows = []
    for family in args.families:
        model, clip, vae = load_family(family)
        positive, negative = conditioning(clip, "a photo of a cat"), conditioning(clip, "")
        if vae is None:
            # FLUX.2: what the latent holds does not change the time; random 128 channels at 1/16.
            latent = torch.randn(args.batch, 128, args.size // 16, args.size // 16, generator=torch.Generator().manual_seed(0))
        else:
            latent = pack("nodes.encode_photos").encode_each(vae, group_of(args.size, args.batch))
        noise = comfy.sample.prepare_noise(latent, 0)

        def edicho(corr, packed=True):
            patched = warp.apply_attention_warp(model, corr, "auto", 0.0, 1.0, 1.0, "warp")
            # Flux has no packed path: its Corr-Attention gathers outputs of the host's own attention.
            replaces = patched.model_options["transformer_options"].get("patches_replace", {}).get("attn1", {})
            for patch in replaces.values():
                patch.packed = packed
            return fuser.apply_noise_fuser(patched, corr, 0.8, 0.9, 0.0, 1.0, 0, "literal")

        grid = tuple(latent.shape[-2:])
        ratio = 16 if vae is None else 8
        corrs = [random_correspondence(Correspondence, args.batch, grid, valid, ratio=ratio) for valid in args.valid]
        # The gather path's work does not depend on the valid fraction.
        models = [model, edicho(corrs[0], packed=False)] + [edicho(corr) for corr in corrs]

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

        best = [float("inf")] * len(models)
        with torch.inference_mode():
            for _ in range(args.repeats):
                for i, m in enumerate(models):
                    best[i] = min(best[i], block(m))
        gpu = [gpu_time(run, m) for m in models] if torch.cuda.is_available() else None
        rows.append((family, best, gpu))
        del model, clip, vae, models
        mm.unload_all_models()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\ndevice: {device}; {args.size}x{args.size}, batch {args.batch}, {args.steps} steps, euler, cfg 7, both "
          f"patches active on every step; best of {args.repeats} rounds of blocks of {args.block} calls, each "
          f"block after an untimed call")
    print(f"| model | unpatched s | " + " | ".join(f"{c} s, ratio" for c in columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for family, times, _ in rows:
        cells = [f"{t:.2f}, {t / times[0]:.3f}x" for t in times[1:]]
        print(f"| {family} | {times[0]:.2f} | " + " | ".join(cells) + " |")
    if torch.cuda.is_available():
        print("\nGPU kernel time in one sampling call, ratio to unpatched (torch profiler)")
        print("| model | unpatched s | " + " | ".join(columns) + " |")
        print("|---|---|" + "---|" * len(columns))
        for family, _, gpu in rows:
            print(f"| {family} | {gpu[0]:.3f} | " + " | ".join(f"{g / gpu[0]:.3f}x" for g in gpu[1:]) + " |")


if __name__ == "__main__":
    main()
