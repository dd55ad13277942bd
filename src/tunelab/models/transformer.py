"""One decoder-only transformer for every supported family, for training and inference.

Llama, Mistral, Qwen2 and GPT-2 differ only in switches held by `ModelConfig`
(RMSNorm vs LayerNorm, RoPE vs learned positions, SwiGLU vs GELU MLP, biases, fused
QKV). Module names are canonical (`layers.3.self_attn.q_proj`); `checkpoint_name`
maps them to the names a Hugging Face checkpoint uses, so LoRA targets and adapter
files speak the ecosystem's language.

KV-cache interface: `forward(..., cache=...)` takes any object with a `dtype` (the
dtype attention runs in: q, k and v are converted to it before RoPE) and one method,
`attend(layer_idx, q, k, v, mask) -> out`: it stores the layer's new keys and values
(q [B, H, S, D] and k, v [B, kv_heads, S, D], RoPE applied) and returns the
attention output [B, H, S, D]. `KVCache` below is the contiguous one `generate`
uses: it also tracks how many slots are filled (`offset`, the default start of
position ids), which the model advances after each forward. The engine's paged
step (engine/model_runner.py) packs several sequences into one row, passes
explicit position ids, and builds its own per-sequence masks, so `mask` is only
the contiguous path's.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from torch.nn.modules import module as _nn_module

from tunelab.models.config import ModelConfig, ModelError


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.positions == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        self.norm = _norm(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        if config.positions == "rope":
            self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)
        self.gradient_checkpointing = False

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [batch, seq, vocab].

        attention_mask: [batch, offset + seq] with 1 for real tokens and 0 for padding,
        covering cached slots too. position_ids default to the count of real tokens
        before each one, so left-padded rows get the positions they would have alone.
        """
        return self.lm_head(self.hidden_states(input_ids, attention_mask, position_ids, cache, attn_mask))

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states [batch, seq, hidden], after the last norm and before lm_head."""
        batch, seq = input_ids.shape
        # Only the contiguous cache has a fill offset and wants masks built here; a paged step masks for itself.
        contiguous = cache is None or isinstance(cache, KVCache)
        offset = cache.offset if isinstance(cache, KVCache) else 0
        if position_ids is None:
            position_ids = default_position_ids(batch, seq, offset, attention_mask, input_ids.device)
        x = self.embed_tokens(input_ids)
        if self.config.positions == "learned":
            x = x + self.embed_positions(position_ids)
            rope = None
        else:
            # in the dtype attention runs in: the cache's when there is one (see Attention.forward)
            rope = rope_cos_sin(self.inv_freq, position_ids, x.dtype if cache is None else cache.dtype)
        masks = {}
        for layer in self.layers:
            window = layer.self_attn.sliding_window
            if attn_mask is not None or not contiguous:
                mask = attn_mask
            else:
                if window not in masks:
                    masks[window] = build_mask(batch, seq, offset, attention_mask, window, input_ids.device)
                mask = masks[window]
            if self.gradient_checkpointing and self.training and cache is None:
                x = torch.utils.checkpoint.checkpoint(layer, x, rope, mask, None, use_reentrant=False)
            else:
                x = _call(layer, x, rope, mask, cache)
        if isinstance(cache, KVCache):
            cache.advance(seq)
        return _call(self.norm, x)

    # ------------------------------------------------------------------ naming
    def checkpoint_name(self, module_path: str) -> str:
        """The Hugging Face checkpoint's name for one of this model's modules."""
        return _rename(module_path, _TO_HF[self.config.model_type == "gpt2"])

    def checkpoint_fan_in_fan_out(self) -> bool:
        """Whether the checkpoint stores projections as [in, out] (GPT-2's Conv1D; PEFT's `fan_in_fan_out`)."""
        return self.config.model_type == "gpt2"

    def module_name(self, checkpoint_path: str) -> str:
        """Inverse of `checkpoint_name`."""
        return _rename(checkpoint_path, _FROM_HF[self.config.model_type == "gpt2"])

    def fuse_projections(self) -> None:
        """Inference only: q/k/v into one `qkv_proj` and gate/up into one `gate_up_proj` per layer, so a decode step
        makes 4 matrix-vector products per layer instead of 7. Same values; the separate modules (and so LoRA
        targets and checkpoint names) are gone, so only a model without adapters is fused."""
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            if not hasattr(attn, "qkv_proj"):
                attn.qkv_proj = _concat_linears([attn.q_proj, attn.k_proj, attn.v_proj])
                del attn.q_proj, attn.k_proj, attn.v_proj
            if mlp.gated and not hasattr(mlp, "gate_up_proj"):
                mlp.gate_up_proj = _concat_linears([mlp.gate_proj, mlp.up_proj])
                del mlp.gate_proj, mlp.up_proj

    def num_parameters(self) -> int:
        seen = {id(p): p.numel() for p in self.parameters()}
        return sum(seen.values())


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = _norm(config)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = _norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rope, mask, cache=None):
        swiglu, norm = getattr(cache, "swiglu", None), getattr(cache, "rms_norm", None)
        if norm is not None and isinstance(self.input_layernorm, RMSNorm):
            # A fused RMSNorm the cache offers (the engine's GPU decode step: engine/gpu_kernels.py), which also
            # takes the residual addition before the second norm: three kernels where there were five.
            first, second = self.input_layernorm, self.post_attention_layernorm
            h = _call(self.self_attn, norm(x, first.weight, first.eps), rope, mask, cache)
            x, normed = norm(x, second.weight, second.eps, h)
            return x + _call(self.mlp, normed, swiglu)
        x = x + _call(self.self_attn, _call(self.input_layernorm, x), rope, mask, cache)
        return x + _call(self.mlp, _call(self.post_attention_layernorm, x), swiglu)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.sliding_window = config.sliding_windows[layer_idx] if config.sliding_windows else None
        q_size = config.num_heads * config.head_dim
        kv_size = config.num_kv_heads * config.head_dim
        if config.fused_qkv:
            self.qkv_proj = nn.Linear(config.hidden_size, q_size + 2 * kv_size, bias=config.qkv_bias)
        else:
            self.q_proj = nn.Linear(config.hidden_size, q_size, bias=config.qkv_bias)
            self.k_proj = nn.Linear(config.hidden_size, kv_size, bias=config.qkv_bias)
            self.v_proj = nn.Linear(config.hidden_size, kv_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=config.o_bias)

    def forward(self, x, rope, mask, cache=None):
        batch, seq, _ = x.shape
        heads, kv_heads = self.num_heads, self.num_kv_heads
        if hasattr(self, "qkv_proj"):
            # [B, T, heads + 2 kv_heads, D]: q and k are rotated together, one RoPE for both (half the small ops);
            # converted once to the dtype attention runs in (the cache's: float32 on CPU whatever the weights).
            qkv = _call(self.qkv_proj, x)
            fused = getattr(cache, "attend_qkv", None)
            if fused is not None:  # one operator splits, rotates, appends and attends (engine/decode_graphs.py)
                return _call(self.o_proj, fused(self.layer_idx, qkv, rope, heads))
            qkv = qkv.view(batch, seq, -1, self.head_dim).transpose(1, 2)
            if cache is not None:
                qkv = qkv.to(cache.dtype)
            qk, v = qkv[:, : heads + kv_heads], qkv[:, heads + kv_heads :]
            if rope is not None:
                qk = apply_rope(qk, *rope)
            q, k = qk[:, :heads], qk[:, heads:]
        else:
            q = _call(self.q_proj, x).view(batch, seq, heads, self.head_dim).transpose(1, 2)
            k = _call(self.k_proj, x).view(batch, seq, kv_heads, self.head_dim).transpose(1, 2)
            v = _call(self.v_proj, x).view(batch, seq, kv_heads, self.head_dim).transpose(1, 2)
            if cache is not None:
                q, k, v = q.to(cache.dtype), k.to(cache.dtype), v.to(cache.dtype)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            out = cache.attend(self.layer_idx, q, k, v, mask)
        else:
            out = attention(q, k, v, mask)
        return _call(self.o_proj, out.transpose(1, 2).reshape(batch, seq, -1).to(x.dtype))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gated = config.gated_mlp
        if self.gated:
            self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act = _activation(config.activation)
        self.swiglu = self.gated and config.activation in ("silu", "swish")

    def forward(self, x, swiglu=None):
        """`swiglu`: an operator for silu(gate) * up of the fused projection [..., 2 I] -> [..., I], which a cache
        may offer (the engine's GPU decode step: one kernel instead of two)."""
        if hasattr(self, "gate_up_proj"):  # fused for inference by `fuse_projections`
            gate_up = _call(self.gate_up_proj, x)
            if swiglu is not None and self.swiglu:
                return _call(self.down_proj, swiglu(gate_up))
            half = gate_up.shape[-1] // 2  # two slices: `chunk` costs a few more dispatches per layer
            return _call(self.down_proj, self.act(gate_up[..., :half]) * gate_up[..., half:])
        if self.gated:
            gate, up = _call(self.gate_proj, x), _call(self.up_proj, x)
            if self.swiglu and torch.is_grad_enabled():
                return self.down_proj(SwiGLU.apply(gate, up))
            return _call(self.down_proj, self.act(gate) * up)
        return _call(self.down_proj, self.act(_call(self.up_proj, x)))


class SwiGLU(torch.autograd.Function):
    """silu(gate) * up that keeps only gate and up for backward and recomputes the
    sigmoid there: autograd would also keep silu(gate), a third [tokens x
    intermediate] tensor per layer, which is most of an MLP's saved activations."""

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        sig = torch.sigmoid(gate)
        silu = gate * sig
        # d silu / d gate = sigmoid(g) * (1 + g * (1 - sigmoid(g)))
        grad_gate = grad * up * (sig * (1 + gate * (1 - sig))) if ctx.needs_input_grad[0] else None
        grad_up = grad * silu if ctx.needs_input_grad[1] else None
        return grad_gate, grad_up


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self._root_n_eps: dict[torch.device, torch.Tensor] = {}

    def forward(self, x):
        # Normalise in float32 and cast back before the weight, as Llama does: the order matters for 16-bit parity.
        if x.dtype == torch.float32:  # Llama's own sequence of operations, for exact parity
            return self.weight * F.rms_norm(x, self.weight.shape, eps=self.eps)
        if x.is_cuda:  # one fused kernel on GPUs (float32 inside); the form below is for CPUs, where it is faster
            return F.rms_norm(x, self.weight.shape, self.weight, eps=self.eps)
        # 16-bit inputs on CPU: sqrt(mean(x^2) + eps) spelled hypot(||x||, sqrt(n * eps)) / sqrt(n), with ||x||
        # computed in float32 straight from the 16-bit input. Five kernels where F.rms_norm on CPU runs seven after an
        # upcast; on a 30-layer model decoding one token that saves ~0.45 ms a step (measured). Equal to Llama's form
        # up to float32 rounding, which the cast back to 16 bits hides (1 ulp on ~0.01% of elements).
        n = x.shape[-1]
        root = self._root_n_eps.get(x.device)
        if root is None:  # a float32 tensor, not a buffer: casting the model to 16 bits must not round it
            root = self._root_n_eps[x.device] = torch.tensor(math.sqrt(n * self.eps), device=x.device)
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
        return self.weight * (x / (torch.hypot(norm, root) / math.sqrt(n))).to(x.dtype)


class KVCache:
    """Contiguous per-row cache: [layers, batch, kv_heads, max_len, head_dim] for k and v."""

    def __init__(self, config: ModelConfig, batch: int, max_len: int, dtype=torch.float32, device="cpu"):
        shape = (config.num_layers, batch, config.num_kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.dtype = dtype
        self.max_len = max_len
        self.offset = 0

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask) -> torch.Tensor:
        end = self.offset + k.shape[2]
        if end > self.max_len:
            raise ModelError(f"KV cache full: {end} positions needed, {self.max_len} allocated")
        self.k[layer_idx, :, :, self.offset : end] = k
        self.v[layer_idx, :, :, self.offset : end] = v
        return attention(q.to(self.k.dtype), self.k[layer_idx, :, :, :end], self.v[layer_idx, :, :, :end], mask)

    def advance(self, n: int) -> None:
        self.offset += n


# ---------------------------------------------------------------------- helpers
def _call(module: nn.Module, *args):
    """`module(*args)` without `nn.Module.__call__`'s bookkeeping when nothing could observe the difference: no
    gradients, no hook on the module or registered globally, no `module.compile()`. That bookkeeping measured ~5 µs a
    call on the 2-core Xeon, and a layer makes 9 calls: a batch-1 decode step of the 30-layer built-in model went
    29.5 -> 28.1 ms (bf16, in-process A/B). LoRA's per-row routing is a forward pre-hook, so it still fires."""
    if (torch.is_grad_enabled() or module._forward_pre_hooks or module._forward_hooks
            or _nn_module._global_forward_pre_hooks or _nn_module._global_forward_hooks
            or module._compiled_call_impl is not None):
        return module(*args)
    return module.forward(*args)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """SDPA with grouped-query heads; `mask` None means plain causal (or, for one query, everything)."""
    gqa = q.shape[1] != k.shape[1]
    if mask is None:
        seq = q.shape[2]
        return F.scaled_dot_product_attention(q, k, v, is_causal=seq > 1 and k.shape[2] == seq, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def default_position_ids(batch, seq, offset, attention_mask, device) -> torch.Tensor:
    if attention_mask is None:
        return torch.arange(offset, offset + seq, device=device).expand(batch, seq)
    positions = attention_mask.long().cumsum(-1) - 1
    return positions[:, offset : offset + seq].clamp(min=0)


def build_mask(batch, seq, offset, attention_mask, window, device) -> torch.Tensor | None:
    """Boolean [batch, 1, seq, offset + seq] mask (True = attend), or None when SDPA's
    own causal flag is enough."""
    if attention_mask is None and window is None and (offset == 0 or seq == 1):
        return None
    total = offset + seq
    q_pos = torch.arange(offset, total, device=device)[:, None]
    k_pos = torch.arange(total, device=device)[None, :]
    allowed = k_pos <= q_pos
    if window is not None:
        allowed = allowed & (k_pos > q_pos - window)
    allowed = allowed[None, None].expand(batch, 1, seq, total)
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, :total].bool()
        # A padding query would attend to nothing and SDPA would return NaN; let it
        # see itself. Its output is never used.
        allowed = allowed | (k_pos == q_pos)[None, None]
    return allowed


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = config.rope_scaling
    if not scaling:
        return inv_freq
    factor = float(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return inv_freq / factor
    # Llama 3.1: leave high frequencies alone, divide low ones by `factor`, and
    # interpolate smoothly in between (Meta's reference implementation).
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)


def rope_cos_sin(inv_freq: torch.Tensor, position_ids: torch.Tensor, dtype):
    """cos and a signed sin, [batch, 1, seq, head_dim] each, computed once per forward for every layer.

    The sin's first half is negated here so that `apply_rope` rotates with one `roll` instead of slicing, negating
    and concatenating in every layer (Llama's rotate_half: (x1, x2) -> (-x2, x1))."""
    freqs = position_ids[:, :, None].float() * inv_freq.float()[None, None, :]
    sin = freqs.sin()
    return torch.cat((freqs, freqs), dim=-1).cos().to(dtype)[:, None], torch.cat((-sin, sin), dim=-1).to(dtype)[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


def _concat_linears(linears: list[nn.Linear]) -> nn.Linear:
    first = linears[0]
    fused = nn.Linear(first.in_features, sum(m.out_features for m in linears), bias=first.bias is not None,
                      device=first.weight.device, dtype=first.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([m.weight for m in linears]))
        if first.bias is not None:
            fused.bias.copy_(torch.cat([m.bias for m in linears]))
    fused.requires_grad_(False)
    return fused


def _norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rms":
        return RMSNorm(config.hidden_size, config.norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps)


def _activation(name: str):
    if name in ("silu", "swish"):
        return F.silu
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu
    if name == "relu":
        return F.relu
    raise ModelError(f"activation {name!r} is not supported; tunelab supports: silu, gelu, gelu_new, relu")


# Canonical module path <-> Hugging Face module path. GPT-2's names come from the
# original OpenAI release (h, ln_1, c_attn, c_fc); the others follow Llama.
_GPT2 = [
    (r"embed_tokens", r"transformer.wte"),
    (r"embed_positions", r"transformer.wpe"),
    (r"layers\.(\d+)\.input_layernorm", r"transformer.h.\1.ln_1"),
    (r"layers\.(\d+)\.post_attention_layernorm", r"transformer.h.\1.ln_2"),
    (r"layers\.(\d+)\.self_attn\.qkv_proj", r"transformer.h.\1.attn.c_attn"),
    (r"layers\.(\d+)\.self_attn\.o_proj", r"transformer.h.\1.attn.c_proj"),
    (r"layers\.(\d+)\.mlp\.up_proj", r"transformer.h.\1.mlp.c_fc"),
    (r"layers\.(\d+)\.mlp\.down_proj", r"transformer.h.\1.mlp.c_proj"),
    (r"layers\.(\d+)\.self_attn", r"transformer.h.\1.attn"),
    (r"layers\.(\d+)", r"transformer.h.\1"),
    (r"layers", r"transformer.h"),
    (r"norm", r"transformer.ln_f"),
    (r"lm_head", r"lm_head"),
]
_LLAMA = [(r"lm_head", r"lm_head"), (r"(.+)", r"model.\1")]


_TO_HF = {True: _GPT2, False: _LLAMA}
_GPT2_FROM_HF = [
    (r"(?:transformer\.)?wte", r"embed_tokens"),
    (r"(?:transformer\.)?wpe", r"embed_positions"),
    (r"(?:transformer\.)?h\.(\d+)\.ln_1", r"layers.\1.input_layernorm"),
    (r"(?:transformer\.)?h\.(\d+)\.ln_2", r"layers.\1.post_attention_layernorm"),
    (r"(?:transformer\.)?h\.(\d+)\.attn\.c_attn", r"layers.\1.self_attn.qkv_proj"),
    (r"(?:transformer\.)?h\.(\d+)\.attn\.c_proj", r"layers.\1.self_attn.o_proj"),
    (r"(?:transformer\.)?h\.(\d+)\.mlp\.c_fc", r"layers.\1.mlp.up_proj"),
    (r"(?:transformer\.)?h\.(\d+)\.mlp\.c_proj", r"layers.\1.mlp.down_proj"),
    (r"(?:transformer\.)?h\.(\d+)\.attn", r"layers.\1.self_attn"),
    (r"(?:transformer\.)?h\.(\d+)", r"layers.\1"),
    (r"(?:transformer\.)?h", r"layers"),
    (r"(?:transformer\.)?ln_f", r"norm"),
    (r"lm_head", r"lm_head"),
]
_FROM_HF = {
    True: _GPT2_FROM_HF,
    False: [(r"lm_head", r"lm_head"), (r"model\.(.+)", r"\1")],
}


def _rename(path: str, table) -> str:
    # Match the longest module prefix so parameter suffixes (".weight") carry over.
    for pattern, replacement in table:
        m = re.match(rf"^{pattern}(?=$|\.)", path)
        if m:
            return m.expand(replacement) + path[m.end() :]
    return path
