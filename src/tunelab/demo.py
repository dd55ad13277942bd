"""`make demo`: the ladder, end to end, on this machine.

1. Build a small Llama-style checkpoint in Hugging Face layout and load it back
   through the real loading code; generate from it.
2. A task (review sentiment) with a training set and a held-out set whose subjects
   never appear in training.
3. The ladder on the held-out set: zero-shot -> few-shot -> LoRA-tuned, each scored
   for quality, latency, tokens and cost by `tunelab eval`, after `tunelab tune`
   trained the adapter. The verdict: the cheapest rung that is good enough.

Every step is a `tunelab` command whose inputs are left in demo/, so it can be rerun
and changed by hand.

Nothing is downloaded: the model starts from random weights and is pre-trained
for a few seconds on a four-line corpus, just enough to recite it. What the demo
shows is the pipeline: HF checkpoint on disk -> tunelab model + tokenizer ->
KV-cached generation, the same model class for training and inference. A later milestone replaces this with the ladder
(zero-shot -> few-shot -> LoRA) on a held-out set.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml

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
    run_ladder(path, console)


# ---------------------------------------------------------------------------- the ladder
POSITIVE = ["great", "lovely", "excellent", "friendly", "delicious", "wonderful", "superb", "charming"]
NEGATIVE = ["awful", "terrible", "rude", "bland", "dirty", "horrible", "noisy", "disappointing"]
TRAIN_SUBJECTS = ["food", "staff", "room", "service", "view", "coffee", "music", "bed"]
HELD_OUT_SUBJECTS = ["soup", "waiter", "garden", "pasta"]
ZERO_SHOT = 'Classify the sentiment of the review as positive or negative.\nReview: """{{ review }}"""\nSentiment:'
FEW_SHOT = (
    "Classify the sentiment of each review as positive or negative.\n\n"
    'Review: """The tea was lovely."""\nSentiment: positive\n\n'
    'Review: """The hall was noisy."""\nSentiment: negative\n\n'
    'Review: """The bread was superb."""\nSentiment: positive\n\n'
    'Review: """The lift was dirty."""\nSentiment: negative\n\n'
    'Review: """{{ review }}"""\nSentiment:'
)
QUALITY_BAR = 0.9


def write_task(folder: Path) -> None:
    for subjects, name in ((TRAIN_SUBJECTS, "train"), (HELD_OUT_SUBJECTS, "held_out")):
        rows = [(f"The {s} was {a}.", label) for s in subjects
                for words, label in ((POSITIVE, "positive"), (NEGATIVE, "negative")) for a in words]
        with (folder / f"{name}.jsonl").open("w") as f:
            for i, (review, label) in enumerate(rows):
                if name == "train":
                    prompt = ZERO_SHOT.replace("{{ review }}", review)
                    f.write(json.dumps({"prompt": prompt, "completion": f" {label}"}) + "\n")
                else:
                    f.write(json.dumps({"id": f"r{i}", "review": review, "reference": label}) + "\n")
    (folder / "tune.yaml").write_text(yaml.safe_dump({
        "model": "tiny-llama", "data": "train.jsonl", "out": "sentiment-lora",
        "steps": 300, "batch_size": 16, "lr": 0.003, "warmup_steps": 10, "rank": 8, "alpha": 16,
        "targets": "all-linear", "seed": 0, "save_every": 60,
    }, sort_keys=False))  # fmt: skip
    # An illustrative self-hosted price, to put cost on the same footing for every rung.
    price = {"input_per_1m": 0.10, "output_per_1m": 0.40}
    params = {"temperature": 0, "max_tokens": 10, "stop": ["\n"]}
    local = {"type": "tunelab", "model": "tiny-llama", "chat": False, "params": params, "price": price}
    (folder / "ladder.yaml").write_text(yaml.safe_dump({
        "description": "review sentiment: zero-shot -> few-shot -> LoRA, on held-out subjects",
        "dataset": "held_out.jsonl",
        "prompts": [{"id": "zero-shot", "template": ZERO_SHOT}, {"id": "few-shot", "template": FEW_SHOT}],
        "providers": [{"id": "base", **local}, {"id": "lora", **local, "adapter": "sentiment-lora"}],
        "metrics": ["exact_match"],
        "concurrency": 16,
    }, sort_keys=False, width=200))  # fmt: skip


def run_ladder(path: Path, console) -> None:
    folder = path.parent
    write_task(folder)
    console.rule("4. tunelab tune demo/tune.yaml (LoRA on the training subjects)")
    _tunelab("tune", str(folder / "tune.yaml"), "--no-progress")
    console.rule("5. tunelab eval demo/ladder.yaml (held-out subjects: soup, waiter, garden, pasta)")
    db = str(folder / "tunelab.db")
    _tunelab("eval", str(folder / "ladder.yaml"), "--db", db)
    console.rule("6. tunelab ladder: which rung is good enough?")
    _tunelab("ladder", "latest", "--db", db, "--metric", "exact_match", "--bar", str(QUALITY_BAR),
             "--rung", "zero-shot=zero-shot@base", "--rung", "few-shot=few-shot@base",
             "--rung", "LoRA-tuned=zero-shot@lora")  # fmt: skip
    console.print("[dim]Rerun any step by hand: tunelab tune demo/tune.yaml; tunelab eval demo/ladder.yaml "
                  "--db demo/tunelab.db; tunelab report latest --db demo/tunelab.db -o demo/report.html[/dim]")
    from tunelab.review.published import validation_story  # 7. which metric agrees with people (offline)
    validation_story(console, db=db)


def _tunelab(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tunelab", *args], check=True)


if __name__ == "__main__":
    main()
