"""`tunelab build`: a model directory converted once for where it will run, as TensorRT-LLM's build step does.

The output is an ordinary Hugging Face directory (transformers still loads it) with the weights already in the target
dtype and any `--merge`d adapters folded into them, plus `tunelab-build.json`: the source checksum, the options, the
tunelab version and the device kind it was built for. `LLM`, `tunelab serve` and the eval providers load it as they
load any checkpoint, with nothing to convert (a 16-bit build is stored in the [out, in] layout its kernels want), and
refuse it with a clear error on another kind of device.

Weight-only int8/int4 are not offered: on the AVX2 CPU they measured slower than 16-bit (`torch._weight_int8pack_mm`
13.5 tok/s, a compiled int8 dequant-and-linear 5.4, against fp16 `F.linear` 56-59 on SmolLM2-135M), so 16-bit is the
fastest mode there; see docs/benchmarks.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tunelab.engine.errors import EngineError

MANIFEST = "tunelab-build.json"


@dataclass
class BuildManifest:
    source: str
    source_sha256: str
    dtype: str
    device_kind: str
    tunelab_version: str
    merged_adapters: dict[str, str] = field(default_factory=dict)
    adapters: dict[str, str] = field(default_factory=dict)  # served unmerged, by name (paths as given)


def build(model: str, output: str | Path, dtype: str = "float16", device: str = "cpu",
          adapters: dict[str, str] | None = None, merge: bool = False) -> BuildManifest:
    """Convert `model` (and its adapters) for `device` into `output`; returns the manifest written there."""
    from tunelab import __version__
    from tunelab.lora import load_adapter, merge_and_unload
    from tunelab.models import load_pretrained, save_pretrained
    from tunelab.models.checkpoint import resolve_checkpoint

    if dtype not in ("float32", "bfloat16", "float16"):
        raise EngineError(f"--dtype: expected float32, bfloat16 or float16, got {dtype!r}")
    source = resolve_checkpoint(model)
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise EngineError(f"{output}: exists and is not empty; choose a new directory")
    adapters = dict(adapters or {})
    net, tokenizer = load_pretrained(source, dtype=torch.float32)  # merge in fp32, round once at the end
    if merge and adapters:
        for name, directory in adapters.items():
            load_adapter(net, directory, adapter_name=name)
        merge_and_unload(net, list(adapters))
    net = net.to(getattr(torch, dtype))
    save_pretrained(net, tokenizer, output)
    manifest = BuildManifest(
        source=str(model), source_sha256=checksum([source, *adapters.values()]), dtype=dtype,
        device_kind=device_kind(device), tunelab_version=__version__,
        merged_adapters=adapters if merge else {}, adapters={} if merge else adapters,
    )
    (output / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    return manifest


def check_build(path, device: str) -> BuildManifest | None:
    """The manifest of a build directory, after checking it was built for this kind of device; None for a plain
    checkpoint."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        return None
    try:
        manifest = BuildManifest(**json.loads(file.read_text()))
    except (ValueError, TypeError) as e:
        raise EngineError(f"{file}: not a tunelab build manifest ({e})") from None
    here = device_kind(device)
    if manifest.device_kind != here:
        raise EngineError(f"{path} was built for {manifest.device_kind}, but this device is {here}; rebuild it here: "
                          f"tunelab build {manifest.source} --dtype {manifest.dtype} -o NEW_DIR")
    return manifest


def device_kind(device: str) -> str:
    """'cpu', or 'cuda-sm<major><minor>' (kernels and the best dtype differ between GPU generations)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        major, minor = torch.cuda.get_device_capability(dev)
        return f"cuda-sm{major}{minor}"
    return dev.type


def checksum(paths: list[Path | str]) -> str:
    """sha256 over the weight and config files of each directory, in a stable order."""
    h = hashlib.sha256()
    for root in map(Path, paths):
        for file in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json")):
            h.update(str(file.relative_to(root)).encode())
            with file.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()
