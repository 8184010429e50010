"""Chunked vs all-at-once matching: time and peak memory, side by side in one run.

    ./edicho python bench/bench_matching.py [--device cuda] [--chunk-size 1024] [--channels 1280]

Two images (reference + one target), random unit features, mutual check on. On the CPU each
measurement runs in a fresh subprocess and peak memory is the growth of its peak RSS over the
inputs; on CUDA it is torch.cuda.max_memory_allocated over the inputs. Prints a markdown table.
"""
import argparse
import json
import resource
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_matcher():
    pkg = types.ModuleType("comfyui_edicho")
    pkg.__path__ = [str(REPO)]
    sys.modules["comfyui_edicho"] = pkg
    from comfyui_edicho.kernels.matching import match_features

    return match_features


def measure(side, channels, chunk, device, repeats):
    """(seconds, peak bytes over the inputs) of one matching configuration."""
    import torch

    match_features = load_matcher()
    features = torch.nn.functional.normalize(
        torch.randn(2, channels, side, side, generator=torch.Generator().manual_seed(0)), dim=1).to(device)
    match_features(features[:, :, :8, :8], 0, chunk_size=chunk)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        match_features(features, 0, chunk_size=chunk)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return min(times), peak


def run_isolated(side, channels, chunk, device, repeats):
    code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_matching as b; "
            f"print(json.dumps(b.measure({side}, {channels}, {chunk!r}, {device!r}, {repeats})))")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--channels", type=int, default=1280)
    parser.add_argument("--sides", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"matching 2 images, C={args.channels}, mutual check on, chunk {args.chunk_size} ({where}); best of {args.repeats}")
    print("| grid | all-at-once s | chunked s | time ratio | all-at-once peak MiB | chunked peak MiB | memory ratio |")
    print("|---|---|---|---|---|---|---|")
    for side in args.sides:
        naive_t, naive_m = run_isolated(side, args.channels, None, args.device, args.repeats)
        chunk_t, chunk_m = run_isolated(side, args.channels, args.chunk_size, args.device, args.repeats)
        print(f"| {side}x{side} | {naive_t:.3f} | {chunk_t:.3f} | {chunk_t / naive_t:.2f}x | {naive_m / 2**20:.0f} | "
              f"{chunk_m / 2**20:.0f} | {chunk_m / max(naive_m, 1):.3f} |", flush=True)


if __name__ == "__main__":
    main()
