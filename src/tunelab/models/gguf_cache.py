"""GGUF files converted once, then loaded from the user cache.

Dequantising SmolLM2-135M takes ~10 s on two cores; loading the converted safetensors
takes about a second. A conversion is keyed by the GGUF's content hash (SHA-256) and the
converter's version, so a changed file or a fixed converter never reuses stale weights.
Hashing 100 MB on every load would cost more than it saves, so the hash is remembered
per (path, size, mtime): an untouched file is recognised from its stat alone.

Location: $TUNELAB_CACHE, else $XDG_CACHE_HOME/tunelab, else ~/.cache/tunelab.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

# Bump when the conversion's output changes, so older cached directories are not reused.
CONVERTER_VERSION = 2


def cache_dir() -> Path:
    if os.environ.get("TUNELAB_CACHE"):
        return Path(os.environ["TUNELAB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "tunelab"


def cached_conversion(gguf_path: str | Path) -> Path:
    """The HF-layout directory converted from `gguf_path`, converting it first if needed."""
    from tunelab.models.gguf_convert import convert_gguf

    gguf_path = Path(gguf_path).resolve()
    root = cache_dir() / "gguf"
    digest = file_digest(gguf_path, root / "stamps")
    target = root / f"{digest[:32]}-v{CONVERTER_VERSION}"
    if (target / "config.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=root))
    try:
        out = convert_gguf(gguf_path, staging / "model")
        (out / "source.json").write_text(
            json.dumps({"gguf": str(gguf_path), "sha256": digest, "converter_version": CONVERTER_VERSION}, indent=2)
            + "\n"
        )
        try:
            out.rename(target)
        except OSError:  # another process finished the same conversion first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def file_digest(path: Path, stamps: Path) -> str:
    """SHA-256 of the file's bytes, remembered under a key made of its path, size and mtime."""
    st = path.stat()
    key = hashlib.sha256(f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:32]
    stamp = stamps / f"{key}.json"
    if stamp.exists():
        try:
            return json.loads(stamp.read_text())["sha256"]
        except (json.JSONDecodeError, KeyError):
            pass  # a damaged stamp is only a lost shortcut: hash again
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    stamps.mkdir(parents=True, exist_ok=True)
    _write_atomic(stamp, json.dumps({"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}))
    return digest


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
