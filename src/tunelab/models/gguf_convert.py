"""GGUF files (llama.cpp's format) turned into Hugging Face checkpoint directories.

A GGUF carries no config.json and no tokenizer.json: the metadata is both, under
llama.cpp's key names, and the weights may be block-quantised. We read the file with
ggml-org's own `gguf` package (its reader and its numpy dequantisers), translate the
metadata into a transformers config dict, undo the one layout change llama.cpp makes
(the Q/K row order of llama-architecture files) and write an ordinary HF directory,
so everything downstream (tunelab's loader, transformers, PEFT) sees one format.

The output is written to a temporary directory beside the target and renamed into
place, so a failed or interrupted conversion never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunelab.models.config import ModelConfig, ModelError

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")
# GGUF block name -> our/HF module path inside `model.layers.N`.
_BLOCK_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_HF_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def convert_gguf(path: str | Path, out_dir: str | Path, dtype: str | torch.dtype | None = "float32") -> Path:
    """Write `path` (a .gguf file) as an HF-layout directory at `out_dir`, which must not exist
    or be empty. Weights are dequantised to `dtype` (float32 keeps every quantised value exact)."""
    from tunelab.models.checkpoint import _dtype, save_state_dict

    path, out_dir = Path(path), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ModelError(f"{out_dir}: already exists and is not empty; choose a new output directory")
    torch_dtype = _dtype(dtype) or torch.float32
    gguf_file = GGUFFile(path)
    hf_config = gguf_file.hf_config()
    ModelConfig.from_hf_dict(hf_config, source=str(path))  # fail on anything tunelab cannot run, before writing
    hf_config["dtype"] = str(torch_dtype).removeprefix("torch.")
    tokenizer = gguf_file.tokenizer()
    state = {name: t.to(torch_dtype) for name, t in gguf_file.tensors(hf_config)}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_state_dict(state, tmp)
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
        tokenizer.save(tmp)
        _default_permissions(tmp)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


class GGUFFile:
    """One GGUF file: its metadata as a config and a tokenizer, its tensors as HF-named torch tensors.
    Every error names the file and the key or tensor at fault."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such file")
        with open(self.path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelError(f"{self.path}: not a GGUF file (it does not start with the magic bytes 'GGUF')")
        try:
            self.reader = _reader(self.path)
        except Exception as e:  # the header or tensor table points past the end, or an unknown value type
            raise ModelError(
                f"{self.path}: truncated or corrupt GGUF file ({self.path.stat().st_size:,} bytes; "
                f"the reader says: {type(e).__name__}: {e})"
            ) from None
        self.metadata = {name: field for name, field in self.reader.fields.items()}
        self.architecture = self.get("general.architecture")
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ModelError(
                f"{self.path}: architecture {self.architecture!r} (general.architecture) is not supported; "
                f"tunelab reads GGUF files of: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )

    # ------------------------------------------------------------------ metadata
    def get(self, key: str, default: Any = ...) -> Any:
        field = self.metadata.get(key)
        if field is None:
            if default is ...:
                raise ModelError(f"{self.path}: missing metadata key {key!r}")
            return default
        try:
            return field.contents()
        except Exception as e:
            raise ModelError(f"{self.path}: metadata key {key!r} is unreadable ({e})") from None

    def arch(self, key: str, default: Any = ...) -> Any:
        return self.get(f"{self.architecture}.{key}", default)

    def hf_config(self) -> dict[str, Any]:
        """The transformers config.json this file's metadata describes."""
        names = {t.name for t in self.reader.tensors}
        model_type = self._model_type()
        heads = self.arch("attention.head_count")
        hidden = self.arch("embedding_length")
        head_dim = self.arch("attention.key_length", None) or self.arch("rope.dimension_count", None) or hidden // heads
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        vocab = self.arch("vocab_size", None) or (len(tokens.data) if tokens is not None else None)
        if vocab is None:
            raise ModelError(f"{self.path}: missing metadata key {self.architecture + '.vocab_size'!r} (and no tokenizer.ggml.tokens)")
        config = {
            "architectures": [_HF_CLASSES[model_type]],
            "model_type": model_type,
            "vocab_size": int(vocab),
            "hidden_size": int(hidden),
            "intermediate_size": int(self.arch("feed_forward_length")),
            "num_hidden_layers": int(self.arch("block_count")),
            "num_attention_heads": int(heads),
            "num_key_value_heads": int(self.arch("attention.head_count_kv", heads)),
            "head_dim": int(head_dim),
            "max_position_embeddings": int(self.arch("context_length")),
            "rms_norm_eps": float(self.arch("attention.layer_norm_rms_epsilon")),
            "rope_theta": float(self.arch("rope.freq_base", 10000.0)),
            "rope_scaling": self._rope_scaling(int(head_dim)),
            "hidden_act": "silu",
            # llama.cpp writes the output projection only when it is not the embedding matrix.
            "tie_word_embeddings": "output.weight" not in names,
            "bos_token_id": self.get("tokenizer.ggml.bos_token_id", None),
            "eos_token_id": self.get("tokenizer.ggml.eos_token_id", None),
            "pad_token_id": self.get("tokenizer.ggml.padding_token_id", None),
        }
        if model_type == "llama":
            config["attention_bias"] = "blk.0.attn_q.bias" in names
            config["mlp_bias"] = False
        elif model_type == "mistral":
            config["sliding_window"] = self.arch("attention.sliding_window", None)
        elif model_type == "qwen2":
            config["use_sliding_window"] = False
        return config

    def _model_type(self) -> str:
        # llama.cpp converts Mistral checkpoints to the llama architecture; like transformers, we
        # recognise them by name so the config says what the model is.
        if self.architecture == "llama" and "mistral" in str(self.get("general.name", "")).lower():
            return "mistral"
        return self.architecture

    def _rope_scaling(self, head_dim: int) -> dict[str, Any] | None:
        kind = self.arch("rope.scaling.type", None)
        freqs = next((t for t in self.reader.tensors if t.name == "rope_freqs.weight"), None)
        if freqs is not None and kind in (None, "none"):
            return self._llama3_scaling(np.asarray(freqs.data, dtype=np.float64), head_dim)
        if kind in (None, "none"):
            return None
        if kind != "linear":
            raise ModelError(
                f"{self.path}: RoPE scaling {kind!r} ({self.architecture}.rope.scaling.type) is not supported; "
                "tunelab reads: none, linear"
            )
        return {"rope_type": "linear", "factor": float(self.arch("rope.scaling.factor"))}

    def _llama3_scaling(self, factors: np.ndarray, head_dim: int) -> dict[str, Any] | None:
        """Llama 3.1's RoPE scaling, which llama.cpp stores as the divisor of each frequency
        (`rope_freqs`) rather than as its parameters. High frequencies keep divisor 1, low ones get
        `factor`, and in between 1/divisor is linear in 1/wavelength; that line fixes the band edges
        (original_length/high and /low), so taking low_freq_factor = 1 recovers the same divisors."""
        theta = float(self.arch("rope.freq_base", 10000.0))
        inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
        if factors.shape != inv_freq.shape:
            raise ModelError(f"{self.path}: tensor 'rope_freqs.weight' has {factors.size} values, expected {inv_freq.size}")
        factor = float(factors.max())
        if factor <= 1.0 + 1e-6:
            return None
        x = inv_freq / (2 * np.pi)  # 1 / wavelength
        middle = (factors > 1 + 1e-4) & (factors < factor * (1 - 1e-4))
        smooth = (1 / factors[middle] - 1 / factor) / (1 - 1 / factor)
        if middle.sum() < 2:
            raise ModelError(f"{self.path}: tensor 'rope_freqs.weight' is not a Llama 3 RoPE scaling tunelab can read")
        slope, intercept = np.polyfit(x[middle], smooth, 1)
        high, old_len = round(float(1 - 1 / intercept), 4), float(-slope / intercept)
        old_len = round(old_len) if abs(old_len - round(old_len)) < 1e-3 * old_len else old_len
        scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": high,
                   "original_max_position_embeddings": old_len}  # fmt: skip
        wavelen = 1 / x
        old_len = scaling["original_max_position_embeddings"]
        expected = np.where(wavelen < old_len / high, 1.0, factor)
        band = (wavelen >= old_len / high) & (wavelen <= old_len)
        s = (old_len / wavelen - 1) / (high - 1)
        expected = np.where(band, 1 / ((1 - s) / factor + s), expected)
        if not np.allclose(expected, factors, rtol=1e-3):
            raise ModelError(f"{self.path}: tensor 'rope_freqs.weight' is not a Llama 3 RoPE scaling tunelab can read")
        return scaling

    def tokenizer(self):
        from tunelab.models.gguf_tokenizer import tokenizer_from_gguf

        return tokenizer_from_gguf(self)

    # ------------------------------------------------------------------ tensors
    def tensors(self, hf_config: dict[str, Any]):
        """(HF name, float32 tensor) for every tensor, dequantised with the gguf package."""
        from gguf.quants import dequantize

        heads, kv_heads = hf_config["num_attention_heads"], hf_config["num_key_value_heads"]
        for t in self.reader.tensors:
            if t.name == "rope_freqs.weight":  # already in the config as rope_scaling
                continue
            name = self._hf_name(t.name)
            try:
                values = dequantize(t.data, t.tensor_type)
            except NotImplementedError:
                raise ModelError(
                    f"{self.path}: tensor {t.name!r} has type {t.tensor_type.name}, which the gguf package "
                    "cannot dequantise"
                ) from None
            # ggml lists dimensions fastest-first; numpy and torch list them slowest-first.
            values = np.ascontiguousarray(values, dtype=np.float32).reshape(tuple(reversed(t.shape.tolist())))
            if self.architecture == "llama":
                # convert_hf_to_gguf reorders Q and K rows (per head, interleaved halves -> pairs) for
                # llama.cpp's RoPE; put them back in HF's rotate-half order.
                if ".attn_q." in t.name:
                    values = _unpermute(values, heads)
                elif ".attn_k." in t.name:
                    values = _unpermute(values, kv_heads)
            yield name, torch.from_numpy(values.copy() if not values.flags.writeable else values)

    def _hf_name(self, gguf_name: str) -> str:
        if gguf_name in _TOP_TENSORS:
            return _TOP_TENSORS[gguf_name]
        m = _BLOCK_NAME.fullmatch(gguf_name)
        if m and m[2] in _BLOCK_TENSORS:
            return f"model.layers.{m[1]}.{_BLOCK_TENSORS[m[2]]}.{m[3]}"
        raise ModelError(f"{self.path}: unexpected tensor {gguf_name!r} for a {self.architecture} model")


def _default_permissions(directory: Path) -> None:
    # mkdtemp makes the staging directory private (0700); the result should look like any other directory.
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for f in directory.iterdir():
        f.chmod(0o666 & ~umask)


def _reader(path: Path):
    from gguf import GGUFReader

    class Reader(GGUFReader):
        # The reader slices its np.memmap once per string and per block group; every slice of a
        # memmap runs memmap.__array_finalize__, which makes parsing SmolLM2's 98k vocabulary and
        # merges take 8 s. A plain ndarray view of the same mapping is 3x faster, same bytes.
        @property
        def data(self):
            return self._data

        @data.setter
        def data(self, value):
            self._data = value.view(np.ndarray)

    return Reader(path)


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp stores each head's rows as [r0, r_d/2, r1, r_d/2+1, ...]; HF as [r0, r1, ..., r_d/2, ...].
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
