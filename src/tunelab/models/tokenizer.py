"""Tokenizer: the `tokenizers` library's tokenizer.json plus the checkpoint's
tokenizer_config.json and chat template, without transformers.

Chat templates are rendered the way transformers renders them (a sandboxed Jinja
environment with trim_blocks and lstrip_blocks, loop controls, a `tojson` that does
not HTML-escape, `raise_exception`, `strftime_now`, and the special tokens as
variables), so the same messages give the same string.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as _HFTokenizer

from tunelab.models.config import ModelError

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


class Tokenizer:
    def __init__(self, backend: _HFTokenizer, config: dict[str, Any] | None = None, chat_template: str | None = None):
        self.backend = backend
        self.config = dict(config or {})
        self.chat_template = chat_template
        self.special_tokens: dict[str, str] = {}
        for key in SPECIAL_TOKEN_KEYS:
            value = self.config.get(key)
            if isinstance(value, dict):  # AddedToken serialised as {"content": ...}
                value = value.get("content")
            if isinstance(value, str):
                self.special_tokens[key] = value

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dir(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        tok_file = path / "tokenizer.json"
        if not tok_file.exists():
            raise ModelError(f"{path}: no tokenizer.json (tunelab reads fast-tokenizer files only)")
        backend = _HFTokenizer.from_file(str(tok_file))
        config = _read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").exists() else {}
        # Older checkpoints keep special tokens only in special_tokens_map.json.
        if (path / "special_tokens_map.json").exists():
            for key, value in _read_json(path / "special_tokens_map.json").items():
                config.setdefault(key, value)
        template = None
        if (path / "chat_template.jinja").exists():
            template = (path / "chat_template.jinja").read_text()
        elif (path / "chat_template.json").exists():
            template = _read_json(path / "chat_template.json").get("chat_template")
        elif "chat_template" in config:
            template = config["chat_template"]
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t["name"]: t["template"] for t in template}
            template = named.get("default") or next(iter(named.values()), None)
        return cls(backend, config, template)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(path / "tokenizer.json"))
        # A template read from tokenizer_config.json (or a GGUF's metadata) is written back there;
        # one read from chat_template.jinja goes back to its own file.
        inline = "chat_template" in self.config
        config = {k: v for k, v in self.config.items() if k != "chat_template"}
        if inline and self.chat_template is not None:
            config["chat_template"] = self.chat_template
        (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        if self.chat_template is not None and not inline:
            (path / "chat_template.jinja").write_text(self.chat_template)

    # ------------------------------------------------------------------ ids
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # encode_batch releases the GIL (encode holds it), so a server tokenising a huge prompt in a worker thread
        # does not stall its event loop or engine thread.
        return self.backend.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def encode_with_offsets(self, text: str, add_special_tokens: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and each token's (start, end) character span in `text`."""
        enc = self.backend.encode(text, add_special_tokens=add_special_tokens)
        return enc.ids, [tuple(o) for o in enc.offsets]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.special_tokens.get("bos_token"))

    @property
    def eos_token_id(self) -> int | None:
        return self.token_to_id(self.special_tokens.get("eos_token"))

    @property
    def pad_token_id(self) -> int | None:
        return self.token_to_id(self.special_tokens.get("pad_token"))

    # ------------------------------------------------------------------ chat
    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
        **kwargs: Any,
    ) -> str:
        if not self.chat_template:
            raise ModelError("this tokenizer has no chat template (tokenizer_config.json or chat_template.jinja)")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m:
                raise ModelError(f"messages[{i}]: expected an object with 'role' and 'content', got {m!r}")
        variables = {**self.special_tokens, **kwargs}
        return _compile(self.chat_template).render(
            messages=messages, tools=tools, documents=None, add_generation_prompt=add_generation_prompt, **variables
        )


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ModelError(f"chat template, line {e.lineno}: {e.message}") from None


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson HTML-escapes; chat templates expect plain JSON.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise(message: str):
    raise jinja2.TemplateError(message)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None

