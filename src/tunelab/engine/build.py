"""`tunelab build`: a model directory converted once for where it will run, as TensorRT-LLM's build step does.

The output is a Hugging Face-layout directory with the weights already in the target dtype, any `--merge`d adapters
folded into them and, with `--quant int8|int4`, the projection layers quantised (models/quantize.py), plus
`tunelab-build.json`: the source checksum, the options (`quant` among them), the tunelab version and the device kind
it was built for. `LLM`, `tunelab serve` and the eval providers load it as they load any checkpoint, with nothing to
convert (a 16-bit build is stored in the [out, in] layout its kernels want; a quantised one as integers and scales,
which the loader only repacks into the CPU kernel's private layout), and refuse it with a clear error on another kind
of device. A float build (float16; transformers still loads it) stays the default: quantisation changes the outputs
(top-1 agreement with float32 ~95% on the built-in model against 99.5% for float16), so it is asked for, not
assumed, even where it decodes faster (docs/benchmarks.md, "Weight-only int8 / int4"). Unmerged adapters are
refused with `--quant`: LoRA wraps float layers only, so they must be merged before quantising.
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
    quant: dict | None = None  # {"mode": "int8"|"int4", "group_size": ...}; None: float weights


def build(model: str, output: str | Path, dtype: str | None = None, device: str = "cpu",
          adapters: dict[str, str] | None = None, merge: bool = False, quant: str | None = None,
          group_size: int | None = None) -> BuildManifest:
    """Convert `model` (and its adapters) for `device` into `output`; returns the manifest written there."""
    from tunelab import __version__
    from tunelab.lora import load_adapter, merge_and_unload
    from tunelab.models import load_pretrained, save_pretrained
    from tunelab.models.checkpoint import resolve_checkpoint
    from tunelab.models.quantize import quantize

    qconfig = quant_options(quant, group_size, dtype, device, bool(adapters) and not merge)
    dtype = dtype or default_dtype(qconfig, device)
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
    if qconfig is not None:  # from the fp32 (merged) weights, with scales rounded to the target dtype
        quantize(net, qconfig, getattr(torch, dtype))
    net = net.to(getattr(torch, dtype))
    save_pretrained(net, tokenizer, output)
    manifest = BuildManifest(
        source=str(model), source_sha256=checksum([source, *adapters.values()]), dtype=dtype,
        device_kind=device_kind(device), tunelab_version=__version__,
        merged_adapters=adapters if merge else {}, adapters={} if merge else adapters,
        quant=None if qconfig is None else qconfig.to_dict(),
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
    _check_quant_record(path, file, manifest)
    here = device_kind(device)
    if manifest.device_kind != here:
        quant = f" --quant {manifest.quant['mode']}" if manifest.quant else ""
        raise EngineError(f"{path} was built for {manifest.device_kind}, but this device is {here}; rebuild it here: "
                          f"tunelab build {manifest.source} --dtype {manifest.dtype}{quant} -o NEW_DIR")
    return manifest


def quant_options(quant: str | None, group_size: int | None, dtype: str | None, device: str,
                  unmerged_adapters: bool):
    """The QuantConfig for `--quant` (None: float weights), after checking the options that go with it."""
    from tunelab.models.config import ModelError
    from tunelab.models.quantize import DEFAULT_INT4_GROUP_SIZE, QuantConfig

    if quant is None:
        if group_size is not None:
            raise EngineError("--group-size: only meaningful with --quant int4")
        return None
    if group_size is None and quant == "int4":
        group_size = DEFAULT_INT4_GROUP_SIZE
    try:
        config = QuantConfig(quant, group_size)
    except ModelError as e:
        raise EngineError(f"--quant: {e}") from None
    if unmerged_adapters:
        raise EngineError("--quant with unmerged --adapter: LoRA cannot run beside quantised base weights in "
                          "tunelab; fold the adapters in before quantising with --merge")
    if device_kind(device) == "cpu" and dtype not in (None, "bfloat16"):
        # torch's CPU int8/int4 kernels are fast only with bfloat16 activations (measured on AVX2: float16 14-28x
        # slower than bfloat16, float32 12-25x), so a quantised CPU build computes in bfloat16.
        raise EngineError(f"--dtype {dtype} with --quant on CPU: the quantised kernels run fast only with bfloat16 "
                          "activations; use --dtype bfloat16 (the default with --quant)")
    return config


def default_dtype(qconfig, device: str = "cpu") -> str:
    """The 16-bit type that decodes fastest on the device this runs on: float16 on AVX2 CPUs (measured on an AMD
    EPYC), bfloat16 on CPUs with AVX512-BF16 (an Intel Xeon, built-in model: batch 1 70 against 64 tok/s, 32
    concurrent requests 418 against 247) and on GPUs; bfloat16 under --quant (the CPU kernels want bfloat16
    activations). float16 is the more precise of the two (docs/benchmarks.md, the demo's ladder)."""
    from tunelab.engine.cpu_kernels import has_avx512_bf16

    if qconfig is not None or torch.device(device).type != "cpu" or has_avx512_bf16():
        return "bfloat16"
    return "float16"


def _check_quant_record(path, file: Path, manifest: BuildManifest) -> None:
    """The manifest's `quant` must be valid and agree with what config.json (which the loader reads) records."""
    from tunelab.models.config import ModelError
    from tunelab.models.quantize import CONFIG_KEY, QuantConfig

    try:
        recorded = None if manifest.quant is None else QuantConfig.from_dict(manifest.quant, f"{file}: quant")
        config = json.loads((Path(path) / "config.json").read_text()).get(CONFIG_KEY)
    except (ModelError, ValueError, OSError) as e:
        raise EngineError(str(e)) from None
    if (recorded and recorded.to_dict()) != config:
        raise EngineError(f"{file}: quant is {manifest.quant!r} but {Path(path) / 'config.json'} records "
                          f"{CONFIG_KEY}={config!r}; the build is inconsistent: build it again")


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
