"""ModelConfig: one dataclass that describes every supported decoder-only family.

It is read from a Hugging Face `config.json`. The families differ in a handful of
switches (norm kind, positional scheme, MLP shape, biases, fused QKV), so instead of
one class per family we translate each family's vocabulary into these switches once,
here, and keep the original dictionary so `save_pretrained` writes back exactly what
was read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "gpt2")


class ModelError(ValueError):
    """A model, checkpoint or tokenizer that tunelab cannot use, with the reason."""


@dataclass
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    norm: str = "rms"  # "rms" | "layer"
    norm_eps: float = 1e-6
    activation: str = "silu"  # "silu" | "gelu_new" | "gelu" | "relu"
    gated_mlp: bool = True  # SwiGLU (gate * up) vs a plain two-layer MLP
    positions: str = "rope"  # "rope" | "learned"
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    fused_qkv: bool = False  # GPT-2 keeps q, k and v in one `c_attn` matrix
    tie_word_embeddings: bool = False
    # Per-layer sliding window (None = full attention), as Mistral and Qwen2 define it.
    sliding_windows: list[int | None] = field(default_factory=list)
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    torch_dtype: str | None = None
    # The checkpoint's own config.json, written back unchanged by save_pretrained.
    hf_config: dict[str, Any] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ModelError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None
        return cls.from_hf_dict(raw, source=str(path))

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelError(
                f"{source}: model_type {model_type!r} is not supported; "
                f"tunelab supports: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        try:
            if model_type == "gpt2":
                cfg = _from_gpt2(raw)
            else:
                cfg = _from_llama_like(raw, model_type)
        except KeyError as e:
            raise ModelError(f"{source}: missing field {e.args[0]!r} required for model_type {model_type!r}") from None
        cfg.hf_config = dict(raw)
        return cfg

    def to_hf_dict(self) -> dict[str, Any]:
        if self.hf_config:
            return dict(self.hf_config)
        raise ModelError("this ModelConfig was not read from a Hugging Face config; build it with from_hf_dict")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("hf_config")
        return d

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return list(self.eos_token_id) if isinstance(self.eos_token_id, list) else [self.eos_token_id]


def _rope(raw: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    # transformers >= 5 writes `rope_parameters` (theta inside); older checkpoints
    # write `rope_theta` and `rope_scaling` separately. Read both.
    params = raw.get("rope_parameters")
    if isinstance(params, dict):
        theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = float(raw.get("rope_theta", 10000.0))
        scaling = dict(raw["rope_scaling"]) if raw.get("rope_scaling") else None
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind == "default":
            scaling = None
        elif kind not in ("linear", "llama3"):
            raise ModelError(f"rope scaling type {kind!r} is not supported; tunelab supports: default, linear, llama3")
        else:
            scaling["rope_type"] = kind
    return theta, scaling


def _from_llama_like(raw: dict[str, Any], model_type: str) -> ModelConfig:
    hidden = raw["hidden_size"]
    heads = raw["num_attention_heads"]
    layers = raw["num_hidden_layers"]
    theta, scaling = _rope(raw)
    windows: list[int | None] = [None] * layers
    window = raw.get("sliding_window")
    if model_type == "mistral" and window:
        windows = [int(window)] * layers
    elif model_type == "qwen2" and window and raw.get("use_sliding_window"):
        types = raw.get("layer_types") or [
            "sliding_attention" if i >= raw.get("max_window_layers", layers) else "full_attention" for i in range(layers)
        ]
        windows = [int(window) if t == "sliding_attention" else None for t in types]
    if model_type == "llama":
        qkv_bias = o_bias = bool(raw.get("attention_bias", False))
        mlp_bias = bool(raw.get("mlp_bias", False))
    elif model_type == "qwen2":
        qkv_bias, o_bias, mlp_bias = True, False, False
    else:
        qkv_bias = o_bias = mlp_bias = False
    return ModelConfig(
        model_type=model_type,
        vocab_size=raw["vocab_size"],
        hidden_size=hidden,
        intermediate_size=raw["intermediate_size"],
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or hidden // heads,
        max_position_embeddings=raw.get("max_position_embeddings", 2048),
        norm="rms",
        norm_eps=raw.get("rms_norm_eps", 1e-6),
        activation=raw.get("hidden_act", "silu"),
        gated_mlp=True,
        positions="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=mlp_bias,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        sliding_windows=windows,
        bos_token_id=raw.get("bos_token_id"),
        eos_token_id=raw.get("eos_token_id"),
        pad_token_id=raw.get("pad_token_id"),
        torch_dtype=raw.get("dtype") or raw.get("torch_dtype"),
    )


def _from_gpt2(raw: dict[str, Any]) -> ModelConfig:
    hidden = raw["n_embd"]
    heads = raw["n_head"]
    if raw.get("scale_attn_by_inverse_layer_idx") or raw.get("reorder_and_upcast_attn"):
        raise ModelError("gpt2 options scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported")
    return ModelConfig(
        model_type="gpt2",
        vocab_size=raw["vocab_size"],
        hidden_size=hidden,
        intermediate_size=raw.get("n_inner") or 4 * hidden,
        num_layers=raw["n_layer"],
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        max_position_embeddings=raw.get("n_positions", 1024),
        norm="layer",
        norm_eps=raw.get("layer_norm_epsilon", 1e-5),
        activation=raw.get("activation_function", "gelu_new"),
        gated_mlp=False,
        positions="learned",
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        fused_qkv=True,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)),
        sliding_windows=[None] * raw["n_layer"],
        bos_token_id=raw.get("bos_token_id"),
        eos_token_id=raw.get("eos_token_id"),
        pad_token_id=raw.get("pad_token_id"),
        torch_dtype=raw.get("dtype") or raw.get("torch_dtype"),
    )
