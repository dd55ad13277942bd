"""tunelab's own CPU kernels (`engine/csrc/*.cpp`), compiled once per machine with the system's C++ compiler and
loaded as torch operators (`torch.ops.tunelab.*`), the way torch.compile's CPU backend compiles its C++.

The library is built on first use into a cache directory keyed by the sources, torch's version and the compiler, so
it is compiled once (~25 s on 2 cores) and reused by every later process. Building is best-effort: without a
compiler, or when the build fails, `load()` logs why and returns False, and the engine keeps torch's own kernels.
Set TUNELAB_NATIVE_KERNELS=0 to never build or load them; TUNELAB_KERNEL_CACHE moves the cache; CXX picks the
compiler (default g++).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCES = ("bf16_linear.cpp", "decode_ops.cpp")
_CSRC = Path(__file__).with_name("csrc")


class NativeBuildError(RuntimeError):
    pass


def enabled() -> bool:
    return os.environ.get("TUNELAB_NATIVE_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")


@functools.lru_cache(maxsize=None)
def load() -> bool:
    """Build (if needed) and load the kernels into torch.ops.tunelab; False, with the reason logged, when they
    cannot be. Once per process; callers check the CPU flags an operator needs before using it."""
    if not enabled():
        return False
    try:
        torch.ops.load_library(str(build()))
    except (NativeBuildError, OSError, RuntimeError) as err:
        log.warning("tunelab's CPU kernels are unavailable, torch's own are used instead: %s", err)
        return False
    return True


def cache_dir() -> Path:
    root = os.environ.get("TUNELAB_KERNEL_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tunelab" / "kernels"


def build() -> Path:
    """The compiled library's path, compiling it first when this cache has no build for these sources, this torch
    and this compiler. Concurrent processes wait on a lock instead of compiling twice."""
    command = _compile_command(Path("OUT"))
    key = hashlib.sha256()
    for name in SOURCES:
        key.update((_CSRC / name).read_bytes())
    key.update(" ".join(command).encode())
    key.update(torch.__version__.encode())
    key.update(_compiler_version(command[0]).encode())
    target = cache_dir() / f"tunelab_kernels-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            log.info("compiling tunelab's CPU kernels into %s (once per machine)", target)
            partial = target.with_suffix(f".{os.getpid()}.tmp")
            result = subprocess.run(_compile_command(partial), capture_output=True, text=True)
            if result.returncode != 0:
                partial.unlink(missing_ok=True)
                tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
                raise NativeBuildError(f"{command[0]} failed (exit {result.returncode}):\n{tail}")
            os.replace(partial, target)
    return target


def _compile_command(output: Path) -> list[str]:
    from torch.utils.cpp_extension import include_paths, library_paths

    cxx = os.environ.get("CXX") or "g++"
    if shutil.which(cxx) is None:
        raise NativeBuildError(f"no C++ compiler ({cxx!r} is not on PATH; install g++ or set CXX)")
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    command = [cxx, "-O3", "-std=c++20", "-shared", "-fPIC", "-fopenmp", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-w"]
    command += [f"-I{p}" for p in include_paths()]
    command += [str(_CSRC / name) for name in SOURCES]
    command += ["-o", str(output)]
    for lib in library_paths():
        command += [f"-L{lib}", f"-Wl,-rpath,{lib}"]
    return command + ["-lc10", "-ltorch_cpu"]


@functools.lru_cache(maxsize=None)
def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return ""


if __name__ == "__main__":  # `python -m tunelab.engine.native`: build now; exit 1 when it cannot be built
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(0 if load() else 1)
