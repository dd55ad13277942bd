"""Reading and writing Hugging Face checkpoint directories.

Weights come only from safetensors (single file or shards with their index). The
state dict is renamed between the checkpoint's names and ours through the model's
`module_name` / `checkpoint_name`, and GPT-2's Conv1D weights, stored [in, out],
are transposed into nn.Linear's [out, in] on the way in and back on the way out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tunelab.models.config import ModelConfig, ModelError
from tunelab.models.quantize import pack_for_kernels, prepare_quantized, quant_config
from tunelab.models.tokenizer import Tokenizer
from tunelab.models.transformer import Transformer

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}  # fmt: skip
# Conv1D modules in GPT-2 checkpoints: their weights are stored transposed.
_GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Non-parameter buffers some GPT-2 checkpoints carry (the old causal mask).
_GPT2_IGNORED = (".attn.bias", ".attn.masked_bias")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.model"]


def load_pretrained(path_or_hub_id: str | Path, dtype=None, device="cpu") -> tuple[Transformer, Tokenizer]:
    """Load a model and its tokenizer from a built-in name, a .gguf file, a local HF directory or a hub id."""
    path = resolve_checkpoint(path_or_hub_id)
    config = ModelConfig.from_file(path / "config.json")
    model = load_model(path, config, dtype=dtype, device=device)
    return model, Tokenizer.from_dir(path)


def save_pretrained(model: Transformer, tokenizer: Tokenizer | None, path: str | Path, max_shard_bytes: int = 5 << 30):
    """Write an HF-layout directory that `transformers.AutoModelForCausalLM` loads."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    hf = model.config.to_hf_dict()
    dtype = next(model.parameters()).dtype
    hf["dtype"] = str(dtype).removeprefix("torch.")
    hf.pop("torch_dtype", None)
    save_state_dict(checkpoint_state_dict(model), path, max_shard_bytes)
    (path / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save(path)


def save_state_dict(state: dict[str, torch.Tensor], path: Path, max_shard_bytes: int = 5 << 30) -> None:
    """Write HF-named tensors as model.safetensors, or as shards with their index."""
    shards = _shard(state, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], str(path / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def resolve_checkpoint(model: str | Path) -> Path:
    """The HF-layout directory for anything that names a model: a built-in name
    (`smollm2-135m-instruct`), a .gguf file (converted once into the user cache), a
    checkpoint directory, or a Hugging Face hub id."""
    from tunelab.models.builtin import BUILTIN_MODELS, builtin_gguf
    from tunelab.models.gguf_cache import cached_conversion

    path = Path(model).expanduser()
    if str(model) in BUILTIN_MODELS and not path.exists():  # a file or directory of that name wins
        return cached_conversion(builtin_gguf(str(model)))
    if path.is_file() and _is_gguf(path):
        return cached_conversion(path)
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path}: not a checkpoint directory, a .gguf file or a built-in model name")
        if not (path / "config.json").exists():
            raise ModelError(f"{path}: not a checkpoint directory (no config.json)")
        return path
    name = str(model)
    if path.suffix.lower() == ".gguf":
        raise ModelError(f"{path}: no such file")
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise ModelError(
            f"{name}: no such directory or file, not a built-in model ({', '.join(BUILTIN_MODELS)}), "
            "and not a hub id of the form 'org/name'"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=_HUB_PATTERNS))
    except Exception as e:  # offline, unknown repo, gated repo...
        raise ModelError(
            f"could not fetch {name!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
            "If this machine is offline, download the checkpoint elsewhere and pass its local directory path."
        ) from None


def _is_gguf(path: Path) -> bool:
    if path.suffix.lower() == ".gguf":
        return True
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def load_model(path: Path, config: ModelConfig, dtype=None, device="cpu") -> Transformer:
    dtype = _dtype(dtype)
    quant = quant_config(config.hf_config, str(path / "config.json"))
    if quant is not None:
        dtype = _quantized_dtype(path, config, quant, dtype)
    with torch.device("meta"):
        model = Transformer(config)
        if quant is not None:  # its projections are integer tensors: give the model the modules that hold them
            prepare_quantized(model, quant, dtype)
    expected = {name: p for name, p in model.state_dict().items()}
    tied = config.tie_word_embeddings
    state = {}
    for hf_name, tensor in _read_safetensors(path):
        if config.model_type == "gpt2" and hf_name.endswith(_GPT2_IGNORED):
            continue
        name = model.module_name(hf_name)
        if name not in expected:
            if tied and name == "lm_head.weight":
                continue
            raise ModelError(f"{path}: unexpected tensor {hf_name!r} for a {config.model_type} model")
        if config.model_type == "gpt2" and hf_name.endswith(_GPT2_CONV1D):
            tensor = tensor.t()
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ModelError(
                f"{path}: tensor {hf_name!r} has shape {tuple(tensor.shape)}, "
                f"config.json implies {tuple(expected[name].shape)}"
            )
        cast = dtype if tensor.is_floating_point() else None  # a quantised model's integers stay integers
        state[name] = tensor.to(device=device, dtype=cast or tensor.dtype).contiguous()
    missing = [n for n in expected if n not in state and not (tied and n == "lm_head.weight")]
    if missing:
        raise ModelError(f"{path}: missing tensors {[model.checkpoint_name(n) for n in missing[:8]]}")
    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        model.lm_head.weight = model.embed_tokens.weight
    if quant is not None:
        pack_for_kernels(model)
    if config.positions == "rope":
        from tunelab.models.transformer import rope_inv_freq

        model.inv_freq = rope_inv_freq(config).to(device)
    return model.eval()


def _quantized_dtype(path: Path, config: ModelConfig, quant, asked):
    """A quantised checkpoint runs in the dtype its scales were rounded to; converting would defeat the build."""
    stored = _dtype(config.torch_dtype or "float32")
    if asked is not None and asked != stored:
        raise ModelError(f"{path}: a {quant.mode} checkpoint computes in {str(stored).removeprefix('torch.')}, the "
                         f"dtype its scales were made for; dtype={str(asked).removeprefix('torch.')} was asked. Drop "
                         "the dtype option, or build again from the float model with the dtype you want")
    return stored


def checkpoint_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """The model's weights under the checkpoint's names and layouts (tied head omitted)."""
    out = {}
    gpt2 = model.config.model_type == "gpt2"
    for name, tensor in model.state_dict().items():
        if model.config.tie_word_embeddings and name == "lm_head.weight":
            continue
        hf_name = model.checkpoint_name(name)
        if gpt2 and hf_name.endswith(_GPT2_CONV1D):
            tensor = tensor.t()
        out[hf_name] = tensor.detach().contiguous().cpu()
    return out


def _read_safetensors(path: Path):
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        others = [p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        hint = f" (found {', '.join(others)}; tunelab loads weights only from safetensors)" if others else ""
        raise ModelError(f"{path}: no model.safetensors or model.safetensors.index.json{hint}")
    for file in files:
        with safe_open(os.fspath(path / file), framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)


def _shard(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards, current, size = [], {}, 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensor
        size += nbytes
    shards.append(current)
    return shards


def _dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    try:
        return DTYPES[str(dtype)]
    except KeyError:
        raise ModelError(f"dtype {dtype!r} is not supported; use one of: {', '.join(sorted(DTYPES))}") from None
