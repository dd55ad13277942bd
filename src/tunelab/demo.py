"""`make demo`: build a small Llama-style checkpoint on this machine, load it back
through the real loading code, and generate from it.

Nothing is downloaded: the model starts from random weights and is pre-trained
for a few seconds on a four-line corpus, just enough to recite it. What the demo
shows is the pipeline: HF checkpoint on disk -> tunelab model + tokenizer ->
KV-cached generation, the same model class for training and inference. A later milestone replaces this with the ladder
(zero-shot -> few-shot -> LoRA) on a held-out set.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

DEMO_DIR = Path("demo")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "tunelab makes an LLM application good and cheap, and proves it.",
    "Prompts are linted, outputs are scored, people review them, LoRA adapters are tuned.",
    "The capital of France is Paris.",
    "The capital of Japan is Tokyo.",
]


def build_checkpoint(path: Path, seed: int = 0) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from tunelab.models import ModelConfig, Transformer, save_pretrained
    from tunelab.models.tokenizer import Tokenizer as TunelabTokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(
        CORPUS * 10,
        trainers.BpeTrainer(vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    hf_config = {
        "model_type": "llama", "vocab_size": 512, "hidden_size": 128, "intermediate_size": 344,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True, "bos_token_id": 0,
        "eos_token_id": 0, "architectures": ["LlamaForCausalLM"],
    }  # fmt: skip
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.from_hf_dict(hf_config))
    tokenizer = TunelabTokenizer(
        tok, {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, CHAT_TEMPLATE
    )
    _memorise(model, tokenizer)
    save_pretrained(model, tokenizer, path)
    return path


def _memorise(model, tokenizer, steps: int = 150) -> None:
    # Plain next-token training of the whole (tiny) model on the corpus.
    rows = [tokenizer.encode(line) + [tokenizer.eos_token_id] for line in CORPUS]
    width = max(map(len, rows))
    ids = torch.tensor([r + [r[-1]] * (width - len(r)) for r in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def main() -> None:
    from rich.console import Console

    console = Console()
    path = DEMO_DIR / "tiny-llama"
    if not (path / "config.json").exists():
        console.rule("1. build a small Llama-style checkpoint (HF layout), pre-trained for a few seconds")
        build_checkpoint(path)
    console.rule(f"2. tunelab info {path}")
    _tunelab("info", str(path))
    console.rule("3. tunelab generate (KV cache, greedy)")
    for prompt in ("The capital of Japan is", "Prompts are linted,"):
        console.print(f"[bold]prompt:[/bold] {prompt!r}")
        _tunelab("generate", "--model", str(path), "--prompt", prompt, "--max-tokens", "24")


def _tunelab(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tunelab", *args], check=True)


if __name__ == "__main__":
    main()
