"""One patched self-attention layer: the packed path vs the gather path vs the unpatched attention,
at real layer shapes, side by side in one run. Seconds, not minutes, on a CPU.

    ./edicho python bench/bench_attention_layer.py [--model sd15] [--size 512] [--batch 4] [--valid 1.0 0.9 0.5]

q, k, v are random `[2 * batch, N, C]` (cond and uncond in one call) for each decoder self-attention
grid of the model at that size (SD1.5: 8 heads; SDXL: 64-wide heads), run through the host's own
attention (`optimized_attention`: its backend on this device). Correspondences are random with
exactly the given fractions of valid target cells (fixed seed). Prints a markdown table.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "harness"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Decoder self-attention per latent downscale: (grid divisor of the latent, channels, heads).
LAYERS = {"sd15": [(4, 1280, 8), (2, 640, 8), (1, 320, 8)], "sdxl": [(4, 1280, 20), (2, 640, 10)]}


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(LAYERS), default="sd15")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--valid", nargs="+", type=float, default=[1.0, 0.9, 0.5])
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def main():
    args = parse_args()
    import host

    host.import_host(base_directory=tempfile.mkdtemp(prefix="edicho-bench-"))
    import types

    import torch

    import comfy.model_management as mm
    from comfy.ldm.modules.attention import optimized_attention
    from bench_patch_overhead import random_correspondence

    package = types.ModuleType("comfyui_edicho")
    package.__path__ = [str(Path(__file__).resolve().parents[1])]
    sys.modules["comfyui_edicho"] = package
    from comfyui_edicho.kernels.corr_attention import (attention_sources, gather_attention_inputs,
                                                       packed_attention_plan, packed_corr_attention)
    from comfyui_edicho.kernels.correspondence import Correspondence

    device = mm.get_torch_device()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    generator = torch.Generator(device).manual_seed(0)

    def timed(work):
        best = float("inf")
        for _ in range(args.repeats + 1):  # the first call warms up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            work()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        return best

    rows = []
    latent = args.size // 8
    for divisor, channels, heads in LAYERS[args.model]:
        grid = (latent // divisor, latent // divisor)
        n = grid[0] * grid[1]
        q, k, v = (torch.randn(2 * args.batch, n, channels, generator=generator, device=device, dtype=dtype)
                   for _ in range(3))

        def attention(q2, k2, v2):
            return optimized_attention(q2, k2, v2, heads)

        corrs = [random_correspondence(Correspondence, args.batch, grid, valid) for valid in args.valid]
        sources = attention_sources(corrs[0], 2, device)
        plans = [packed_attention_plan(corr, 2, device) for corr in corrs]
        with torch.inference_mode():
            plain = timed(lambda: attention(q, k, v))
            gather = timed(lambda: attention(*gather_attention_inputs(q, k, v, sources)))
            packed = [timed(lambda plan=plan: packed_corr_attention(q, k, v, plan, attention)) for plan in plans]
        rows.append((grid, channels, plain, gather, packed))
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\ndevice: {name}, {dtype}; {args.model} at {args.size}x{args.size}, batch {args.batch}, cond and uncond "
          f"in one call; host attention: {optimized_attention.__name__}; best of {args.repeats}")
    columns = [f"{valid:.0%} valid" for valid in args.valid]
    print("| grid | channels | unpatched s | gather path s | " + " | ".join(f"packed {c} s, vs gather" for c in columns) + " |")
    print("|---|---|---|---|" + "---|" * len(columns))
    for grid, channels, plain, gather, packed in rows:
        cells = [f"{t:.4f}, {t / gather:.3f}x" for t in packed]
        print(f"| {grid[0]}x{grid[1]} | {channels} | {plain:.4f} | {gather:.4f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
