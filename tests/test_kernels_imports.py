"""The kernels load with nothing of the host around: a plain interpreter, the pack's kernels only."""
import subprocess
import sys
from pathlib import Path

KERNELS = Path(__file__).resolve().parents[1] / "kernels"
HOST_MODULES = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "server", "execution")


def test_every_kernel_module_imports_without_the_host():
    code = (
        "import importlib, pkgutil, sys\n"
        f"sys.path.insert(0, {str(KERNELS.parent)!r})\n"
        "import kernels\n"
        "names = [m.name for m in pkgutil.iter_modules(kernels.__path__)]\n"
        "for name in names: importlib.import_module('kernels.' + name)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {HOST_MODULES!r})\n"
        "print(len(names), bad)\n"
    )
    # -P and a repo-root path: the pack's own nodes/ must not load either (it is host-only code).
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    count, bad = out.stdout.strip().split(" ", 1)
    assert int(count) >= 6
    assert bad == "[]"
