"""Chunked vs all-at-once matching: time and peak memory, side by side in one run.

    ./edicho python bench/bench_matching.py [--device cuda] [--chunk-size 512] [--channels 1280]

Two images (reference + one target), random unit features, mutual check on. Every measurement
runs in a fresh subprocess, all-at-once and chunked alternating, and each variant's best time is
kept, so load from other work on the machine hits both alike. Peak memory is the growth over the
inputs: on CUDA torch.cuda.max_memory_allocated, on the CPU the process's peak RSS (VmHWM), reset
after the inputs are made (ru_maxrss cannot be reset, and making the inputs already peaks above
a chunked run). Prints a markdown table.
"""
import argparse
import inspect
import json
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


def proc_status(key):
    """A size field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status: the CPU memory measure needs Linux")


def measure(side, channels, chunk, device):
    """(seconds, peak bytes over the inputs) of one matching run."""
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
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM to the current RSS
        base = proc_status("VmRSS")
    start = time.perf_counter()
    match_features(features, 0, chunk_size=chunk)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else proc_status("VmHWM")
    return seconds, peak - base


def run_isolated(side, channels, chunk, device):
    code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_matching as b; "
            f"print(json.dumps(b.measure({side}, {channels}, {chunk!r}, {device!r})))")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def side_by_side(side, channels, chunk, device, repeats):
    """Best time and largest peak of all-at-once and of chunked, runs alternating."""
    runs = {None: [], chunk: []}
    for _ in range(repeats):
        for variant in runs:
            runs[variant].append(run_isolated(side, channels, variant, device))
    return [(min(t for t, _ in runs[v]), max(m for _, m in runs[v])) for v in runs]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunk-size", type=int, default=None, help="default: match_features' own default")
    parser.add_argument("--channels", type=int, default=1280)
    parser.add_argument("--sides", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    chunk = args.chunk_size or inspect.signature(load_matcher()).parameters["chunk_size"].default
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"matching 2 images, C={args.channels}, mutual check on, chunk {chunk} ({where}); "
          f"best of {args.repeats} alternating runs")
    print("| grid | all-at-once s | chunked s | time ratio | all-at-once peak MiB | chunked peak MiB | memory ratio |")
    print("|---|---|---|---|---|---|---|")
    for side in args.sides:
        (naive_t, naive_m), (chunk_t, chunk_m) = side_by_side(side, args.channels, chunk, args.device, args.repeats)
        print(f"| {side}x{side} | {naive_t:.3f} | {chunk_t:.3f} | {chunk_t / naive_t:.2f}x | {naive_m / 2**20:.0f} | "
              f"{chunk_m / 2**20:.0f} | {chunk_m / max(naive_m, 1):.3f} |", flush=True)


if __name__ == "__main__":
    main()
