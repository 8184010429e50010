"""bench/gpu_check.py: its table parser, and the whole check at tiny sizes on this machine, so that it cannot rot."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tables_are_read_as_rows_of_cells_without_separators(gpu_check):
    text = "device: x\n| a | b |\n|---|:-:|\n| 1 | 2.5x |\nnot a table\n\n| c |\n|---|\n| 3 |\n"
    assert gpu_check.tables(text) == [[["a", "b"], ["1", "2.5x"]], [["c"], ["3"]]]
    assert gpu_check.tables("no table\n") == []


def ratio(cell):
    """The ratio of a `seconds, ratio` cell: `0.53, 1.648x` -> 1.648."""
    return float(cell.split(",")[-1].strip().rstrip("x"))


@pytest.mark.host
@pytest.mark.slow
def test_the_check_runs_every_section_at_tiny_sizes(tmp_path):
    done = subprocess.run([sys.executable, "-P", "bench/gpu_check.py", "--tiny", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=1200, env=os.environ)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = report["sections"]
    assert list(sections) == ["half precision", "dynamic VRAM", "sampling SD1.5", "sampling SDXL", "DiT overhead",
                              "extraction 512 px", "extraction 768 px"]
    assert sections["extraction 768 px"]["status"] == "skipped"
    assert all(s["status"] == "ok" for name, s in sections.items() if name != "extraction 768 px")
    for name, families in [("sampling SD1.5", ["sd15"]), ("sampling SDXL", ["sdxl"]),
                           ("DiT overhead", ["flux-dev", "sd35-medium"])]:
        (table,) = sections[name]["tables"]
        assert [row[0] for row in table[1:]] == families
        # unpatched, the gather path and 100 / 90 / 50% valid, each a finite positive ratio
        assert all(len(row) == 6 and all(0 < ratio(cell) < math.inf for cell in row[2:]) for row in table[1:])
    figures = sections["half precision"]["figures"]
    for dtype in ("bf16", "fp16"):
        (measured,) = [value for key, value in figures.items() if f" {dtype} compute" in key]
        assert all(math.isfinite(measured[k]) for k in ("packed vs gather", "patched vs float32"))
    assert any("ms per image" in line for line in sections["extraction 512 px"]["tail"])
    # Whether DynamicVRAM was on (never on the CPU: --cpu turns it off), and the extractor's early stop in each run.
    defaults = sections["dynamic VRAM"]["figures"]["defaults"]
    assert isinstance(defaults["dynamic_vram_active"], bool) and defaults["patcher"]
    assert len(defaults["runs"]) == 2 and all(run["output_block_calls"][4:] == [0] * 4 for run in defaults["runs"])
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert all(f"| {name} |" in markdown for name in sections)
