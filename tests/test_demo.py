"""The README's first command: `./edicho demo`, as a user runs it (a smoke run without --ckpt)."""
import os
import subprocess
import sys

import pytest

import demo
import tiny_checkpoints
from conftest import CACHE, REPO


def test_demo_smoke_run_writes_the_edit_the_plain_batch_and_the_preview(host, tmp_path):
    run = subprocess.run([sys.executable, "-P", str(REPO / "harness" / "demo.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={**os.environ, "EDICHO_CACHE": str(CACHE), "PYTHONPATH": ""})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "SMOKE RUN" in run.stdout and "RANDOM-WEIGHT" in run.stdout
    written = sorted(p.name for p in (tmp_path / "edicho").glob("*.png"))
    assert [name.split("_")[0] for name in written] == ["correspondence"] * 3 + ["edicho"] * 3 + ["plain"] * 3


@pytest.mark.parametrize("family, side", [("sd15", 512), ("sd2-v", 768), ("sdxl", 1024)])
def test_demo_samples_a_given_checkpoint_at_its_own_size(host, family, side):
    assert demo.native_size(tiny_checkpoints.ensure_checkpoint(family, CACHE / "checkpoints")) == side
