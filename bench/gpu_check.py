"""The GPU check: one script for the figures the README's GPU rows lack, written as one JSON and one markdown table.

    ./edicho python bench/gpu_check.py [--out test-output/gpu-check] [--tiny] [--budget 450]
    ./edicho python --host 0.33 bench/gpu_check.py            # the same on the other host

Each section is one of this folder's benchmarks (or a test module that records its figures), run as its own
process so that one section's failure or memory does not reach the next; the sizes are the GPU's unless
`--tiny`, which runs every section at tiny sizes on whatever device there is (CI runs it on the CPU so that the
script cannot rot). Sections that would start after `--budget` seconds are recorded as skipped, so the whole check
stays within the 8 minutes a lent GPU gives it. Writes `gpu_check.json` (per section: command, exit status,
seconds, its markdown tables as rows of cells, its last output lines) and `gpu_check.md`.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The sections that are test modules, and the file each writes its figures to.
FIGURES = {"half precision": REPO / "test-output" / "precision.json",
           "dynamic VRAM": REPO / "test-output" / "dynamic_vram.json"}


def overhead(families, size, batch, steps, repeats=2):
    return ["bench/bench_patch_overhead.py", "--families", *families, "--size", str(size), "--batch", str(batch),
            "--steps", str(steps), "--repeats", str(repeats), "--block", "1"]


def tests(module, *select):
    return ["-m", "pytest", module, "-q", "-p", "no:cacheprovider", *select]


def extraction(size):
    return ["bench/bench_workflow.py", "--family", "sd15-full", "--size", str(size), "--batch", "4", "--steps"]


# (name, what it measures, GPU command, tiny command); commands are this Python's arguments.
SECTIONS = [
    ("half precision", "SD1.x sampling with both patches computing in bf16 and fp16: packed vs gather path, and "
     "relative L2 to float32 at the same seed (tests/test_precision.py's figures)",
     tests("tests/test_precision.py", "-k", "half_compute"), tests("tests/test_precision.py", "-k", "half_compute")),
    # About a minute: two server starts and three runs of the tiny graph (63 s on 2 CPU cores).
    ("dynamic VRAM", "the host's defaults through the real server (0.33 on a GPU: DynamicVRAM, ModelPatcherDynamic): "
     "the example graph twice on one server, the extractor's early stop (output blocks after its level never run), "
     "features vs DynamicVRAM off (tests/test_dynamic_vram.py's figures)",
     tests("tests/test_dynamic_vram.py"), tests("tests/test_dynamic_vram.py")),
    ("sampling SD1.5", "Edicho / unpatched, full-size SD1.5 at 512 px, batch 4, 100 / 90 / 50% valid cells",
     overhead(["sd15-full"], 512, 4, 20), overhead(["sd15"], 64, 2, 1, 1)),
    ("sampling SDXL", "Edicho / unpatched, full-size SDXL at 1024 px, batch 2, 100 / 90 / 50% valid cells",
     overhead(["sdxl-full"], 1024, 2, 10), overhead(["sdxl"], 64, 2, 1, 1)),
    ("DiT overhead", "Edicho / unpatched on the tiny loader-detected Flux.1 dev, FLUX.2 Klein and SD3.5 Medium "
     "shapes and the smallest loader-detected Qwen-Image (full-width reduced-depth Flux.1 and FLUX.2 are not "
     "built yet)",
     overhead(["flux-dev", "flux2-klein", "sd35-medium", "qwen-image"], 512, 3, 4),
     overhead(["flux-dev", "sd35-medium"], 64, 2, 1, 1)),
    ("extraction 512 px", "feature extraction per image, full-size SD1.5, ensemble 8, 512 px (DIFT: 203 ms at 768 "
     "px on an A6000)", extraction(512), ["bench/bench_workflow.py", "--family", "sd15", "--size", "64", "--batch",
                                          "2", "--steps"]),
    ("extraction 768 px", "the same at 768 px", extraction(768), None),
]
NOT_COVERED = ["DynamicVRAM under memory pressure (weights evicted and streamed in again between the extractor's and "
               "the sampler's calls): the tiny UNet of the dynamic VRAM section fits in any GPU"]


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=REPO / "test-output" / "gpu-check")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on any device (CI, on the CPU)")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds after which no section starts")
    parser.add_argument("--only", nargs="*", help="section names to run (default: all)")
    return parser.parse_args()


def tables(text):
    """The markdown tables in `text` as lists of rows of cells, separator rows left out."""
    found, current = [], []
    for line in text.splitlines() + [""]:
        line = line.strip()
        if line.startswith("|") and line.endswith("|"):
            cells = [cell.strip() for cell in line[1:-1].split("|")]
            if not all(set(cell) <= set("-: ") for cell in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    return found


def run_section(args, name, command, budget_left):
    """One section's record; `command` None or no time left: skipped, with why."""
    if command is None:
        return {"status": "skipped", "why": "GPU sizes only"}
    if budget_left <= 0:
        return {"status": "skipped", "why": f"the check's {args.budget:.0f} s budget was spent"}
    start, wall_start = time.perf_counter(), time.time()
    try:
        done = subprocess.run([sys.executable, "-P", *command], cwd=REPO, capture_output=True, text=True,
                              timeout=max(budget_left, 30))
        rc, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        # The captured output may come back as bytes even with text=True.
        partial = expired.stdout or ""
        rc, output = "timeout", partial.decode(errors="replace") if isinstance(partial, bytes) else partial
    record = {"status": "ok" if rc == 0 else "failed", "command": " ".join(["python", *command]), "exit": rc,
              "seconds": round(time.perf_counter() - start, 1), "tables": tables(output),
              "tail": output.strip().splitlines()[-8:]}
    # A file left by an earlier run (the precision tests merge theirs into it) is no figure of this one.
    figures = FIGURES.get(name)
    if figures is not None and figures.exists() and figures.stat().st_mtime >= wall_start:
        record["figures"] = json.loads(figures.read_text())
    return record


def device():
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({torch.get_num_threads()} threads)"


def markdown(report):
    lines = [f"# Edicho GPU check ({'tiny sizes' if report['tiny'] else 'GPU sizes'})", "",
             f"device: {report['device']}; total {report['seconds']:.0f} s", "",
             "| section | measures | status | s | command |", "|---|---|---|---|---|"]
    for name, section in report["sections"].items():
        lines.append(f"| {name} | {section['measures']} | {section['status']}{': ' + section['why'] if 'why' in section else ''}"
                     f" | {section.get('seconds', '')} | `{section.get('command', '')}` |")
    for name, section in report["sections"].items():
        for table in section.get("tables", []):
            lines += ["", f"## {name}", "", "| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
            lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    lines += ["", "Not covered: " + "; ".join(report["not_covered"])]
    return "\n".join(lines) + "\n"


def main():
    args = parse_args()
    start = time.perf_counter()
    report = {"device": device(), "tiny": args.tiny, "sections": {}, "not_covered": NOT_COVERED}
    for name, measures, gpu, tiny in SECTIONS:
        if args.only and name not in args.only:
            continue
        record = run_section(args, name, tiny if args.tiny else gpu, args.budget - (time.perf_counter() - start))
        report["sections"][name] = {"measures": measures, **record}
        print(f"[gpu-check] {name}: {record['status']} {record.get('seconds', '')}", flush=True)
    report["seconds"] = round(time.perf_counter() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(f"[gpu-check] wrote {args.out / 'gpu_check.json'} and gpu_check.md in {report['seconds']:.0f} s")
    sys.exit(0 if all(s["status"] != "failed" for s in report["sections"].values()) else 1)


if __name__ == "__main__":
    main()
