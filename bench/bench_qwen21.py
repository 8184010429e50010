"""Sampling time of upstream's Qwen-Image 2.1 class with both Edicho patches vs unpatched, prefix cache on and off.

    ./edicho python --host 0.33 bench/bench_qwen21.py [--size 512] [--batch 4] [--steps 4] [--blocks 4]
        [--valid 1.0 0.9 0.5] [--threads N] [--repeats 3]

The class at a reduced size (tests/reduced_qwen21.py: `--blocks` single-stream blocks of 2 heads of 32, text 32
wide and 6 tokens, on the 0.33.0 tree with the overlay, or the host's own on >= 0.37), each photo its own edit
reference at the latent's size, the host's sampler (euler, cfg 4, so Corr-CFG acts), both patches active on every
step on the default blocks (worst case), on random correspondences with exactly the given fractions of valid target
cells. Prints a markdown table: wall and CPU seconds, and the ratio of CPU seconds to unpatched with the same cache
setting (this process's CPU time: on a shared machine less moved by other processes than wall time).
"""
import argparse
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "harness"), str(REPO / "tests"), str(REPO / "bench")]


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--valid", nargs="+", type=float, default=[1.0, 0.9, 0.5],
                        help="fractions of valid target cells of the random correspondences")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's); 1 is steadier on a busy machine")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds over all models (the best is kept)")
    return parser.parse_args()


def main():
    args = parse_args()
    import host

    comfyui_path, _ = host.import_host(base_directory=tempfile.mkdtemp(prefix="edicho-bench-"))
    import importlib

    import pytest
    import torch

    import reduced_qwen21
    from bench_patch_overhead import random_correspondence

    reason = reduced_qwen21.why_not_runnable(comfyui_path)
    if reason is not None:
        sys.exit(f"bench_qwen21: {reason}")
    if args.threads:
        torch.set_num_threads(args.threads)
    # The pack as tests/conftest.py imports it: on the host's source, no node loaded.
    package = types.ModuleType("comfyui_edicho")
    package.__path__ = [str(REPO)]
    sys.modules["comfyui_edicho"] = package
    Correspondence = importlib.import_module("comfyui_edicho.kernels.correspondence").Correspondence
    warp = importlib.import_module("comfyui_edicho.nodes.attention_warp")
    fuser = importlib.import_module("comfyui_edicho.nodes.noise_fuser")
    families = importlib.import_module("comfyui_edicho.nodes.families")

    monkeypatch = pytest.MonkeyPatch()
    reduced_qwen21.add_missing_host_bits(monkeypatch)
    model = reduced_qwen21.qwen_image21(reduced_qwen21.upstream_class(comfyui_path, monkeypatch), blocks=args.blocks)
    grid = (args.size // 16, args.size // 16)

    def edicho(m, valid):
        corr = random_correspondence(Correspondence, args.batch, grid, valid, ratio=16)
        patched = warp.apply_attention_warp(m, corr, "auto", 0.0, 1.0, 1.0, "warp")
        return fuser.apply_noise_fuser(patched, corr, 0.8, 0.9, 0.0, 1.0, 0, "literal")

    def run(m):
        """(wall, CPU) seconds of one sampling call; CPU time is this process's, less moved by other processes."""
        wall, cpu = time.perf_counter(), time.process_time()
        reduced_qwen21.sample_qwen21(m, batch=args.batch, latent=grid, steps=args.steps, cfg=4.0)
        return time.perf_counter() - wall, time.process_time() - cpu

    caches = {"on": model, "off": reduced_qwen21.without_prefix_cache(model)}
    models = {(cache, valid): base if valid is None else edicho(base, valid)
              for cache, base in caches.items() for valid in [None, *args.valid]}
    best = {key: (float("inf"), float("inf")) for key in models}
    with torch.inference_mode():
        for m in models.values():
            run(m)
        # Rounds over every model, so that a change in the machine's load reaches them alike.
        for _ in range(args.repeats):
            for key, m in models.items():
                best[key] = tuple(min(pair) for pair in zip(best[key], run(m)))
    tokens = grid[0] * grid[1]
    print(f"\nCPU ({torch.get_num_threads()} threads); {args.size}x{args.size} ({tokens} target tokens, one reference "
          f"of {tokens}, 6 text), batch {args.batch}, {args.steps} steps, euler, cfg 4, {args.blocks} blocks (auto = "
          f"{families.family_of(model, 'bench').default_layers(model)}), both patches on every step; best of "
          f"{args.repeats} rounds after an untimed one; wall s / CPU s, ratio of CPU s to unpatched")
    print("| prefix cache | unpatched | " + " | ".join(f"{v:.0%} valid" for v in args.valid) + " |")
    print("|---|---|" + "---|" * len(args.valid))
    for cache in caches:
        wall, cpu = best[(cache, None)]
        cells = [f"{best[(cache, v)][0]:.2f} / {best[(cache, v)][1]:.2f}, {best[(cache, v)][1] / cpu:.3f}x"
                 for v in args.valid]
        print(f"| {cache} | {wall:.2f} / {cpu:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
