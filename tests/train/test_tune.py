"""The loop end to end: resume is bit-identical (also after SIGKILL), adapters load in PEFT,
data parallelism equals one big batch, NaN stops cleanly."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tunelab.train import TrainError, TuneConfig, tune

BASE = dict(steps=12, batch_size=4, lr=5e-3, warmup_steps=2, rank=4, alpha=8, dropout=0.1, seed=3,
            max_seq_len=64, targets=["q_proj", "v_proj", "down_proj"])  # fmt: skip


def _run(tiny_checkpoint, data, out, **kw):
    cfg = TuneConfig(model=str(tiny_checkpoint("llama")), data=str(data), out=str(out), **{**BASE, **kw})
    return tune(cfg, progress=False)


def _adapter(out):
    return load_file(str(out / "adapter_model.safetensors"))


def test_resume_is_bit_identical(tiny_checkpoint, qa_data, tmp_path):
    _run(tiny_checkpoint, qa_data, tmp_path / "full")
    first = _run(tiny_checkpoint, qa_data, tmp_path / "split", save_every=3, stop_after=6)
    assert first.steps == 6
    resumed = _run(tiny_checkpoint, qa_data, tmp_path / "split", save_every=3, resume=True)
    assert resumed.steps == 12
    full, split = _adapter(tmp_path / "full"), _adapter(tmp_path / "split")
    assert full.keys() == split.keys() and len(full) == 12  # 2 layers x 3 modules x (A, B)
    for key in full:
        assert torch.equal(full[key], split[key]), key
    assert any(full[k].abs().sum() > 0 for k in full if "lora_B" in k)  # B moved away from zero


# The killed run stops itself at step 12, before writing that checkpoint, and waits there to be killed: the kill
# cannot race the end of the run, and step-10 is the last checkpoint on disk when it lands.
_HOLD_AT_STEP_12 = """
import sys, time, runpy
import tunelab.train.trainer as trainer
real = trainer.save_checkpoint
def held(out, step, *args):
    if step == 12:
        print("holding before step-12", flush=True)
        time.sleep(3600)
    return real(out, step, *args)
trainer.save_checkpoint = held
sys.argv = ["tunelab", *sys.argv[1:]]
runpy.run_module("tunelab", run_name="__main__")
"""


def test_resume_after_sigkill_is_bit_identical(tiny_checkpoint, qa_data, tmp_path):
    _run(tiny_checkpoint, qa_data, tmp_path / "full", steps=20)
    out = tmp_path / "killed"
    args = ["tune", "--model", str(tiny_checkpoint("llama")), "--data", str(qa_data),
            "--out", str(out), "--steps", "20", "--batch-size", "4", "--lr", "5e-3", "--warmup-steps", "2",
            "--rank", "4", "--alpha", "8", "--dropout", "0.1", "--seed", "3", "--max-seq-len", "64",
            "--targets", "q_proj,v_proj,down_proj", "--save-every", "2", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_AT_STEP_12, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # blocks until the run holds at step 12, or exits (then "")
        assert line.strip() == "holding before step-12", line + proc.stderr.read()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "adapter_model.safetensors").exists()
    assert {p.name for p in (out / "checkpoints").iterdir()} == {f"step-{n}" for n in range(2, 11, 2)}
    done = subprocess.run([sys.executable, "-m", "tunelab", *args, "--resume"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed from" in done.stdout and "(step 10)" in done.stdout, done.stdout
    full, resumed = _adapter(tmp_path / "full"), _adapter(out)
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


def test_adapter_loads_in_peft_with_equal_logits(tiny_checkpoint, qa_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunelab.lora import load_adapter
    from tunelab.models import load_pretrained

    _run(tiny_checkpoint, qa_data, tmp_path / "out", steps=4, dropout=0.0)
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all("tokens_per_s" in r and "lr" in r for r in log)
    ours, _ = load_pretrained(tiny_checkpoint("llama"))
    load_adapter(ours, tmp_path / "out")
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_checkpoint("llama")), tmp_path / "out")
    ids = torch.randint(3, 300, (2, 10))
    with torch.no_grad():
        assert (ours(ids) - ref(ids).logits).abs().max() <= 1e-4


def test_two_process_gloo_equals_one_process(tiny_checkpoint, qa_data, tmp_path):
    common = ["--model", str(tiny_checkpoint("llama")), "--data", str(qa_data), "--steps", "4", "--lr", "5e-3",
              "--rank", "4", "--seed", "3", "--max-seq-len", "64", "--targets", "q_proj,v_proj", "--no-progress"]  # fmt: skip
    single = tmp_path / "single"
    _run(tiny_checkpoint, qa_data, single, steps=4, dropout=0.0, warmup_steps=0, targets=["q_proj", "v_proj"],
         batch_size=4, alpha=16)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    dist = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "tunelab", "tune", *common, "--out", str(tmp_path / "ddp"), "--batch-size", "2"],
        capture_output=True, text=True, timeout=180, env=env,
    )  # fmt: skip
    assert dist.returncode == 0, dist.stdout[-3000:] + dist.stderr[-3000:]
    a, b = _adapter(single), _adapter(tmp_path / "ddp")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), (key, (a[key] - b[key]).abs().max())


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_checkpoint, qa_data, tmp_path, monkeypatch):
    import tunelab.train.trainer as trainer

    calls = []
    real = trainer.chunked_cross_entropy

    def poisoned(*args, **kwargs):  # the third step's loss turns NaN, as an overflow would
        calls.append(1)
        total, n = real(*args, **kwargs)
        return (total * float("nan") if len(calls) == 3 else total), n

    monkeypatch.setattr(trainer, "chunked_cross_entropy", poisoned)
    with pytest.raises(TrainError, match=r"loss is nan at step 3; stopped .*Last good checkpoint: .*step-2"):
        _run(tiny_checkpoint, qa_data, tmp_path / "out", save_every=1, steps=6)
    ckpts = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert ckpts == ["step-1", "step-2"]
    step2 = tmp_path / "out" / "checkpoints" / "step-2" / "trainable.safetensors"
    assert all(torch.isfinite(t).all() for t in load_file(str(step2)).values())


def test_bad_row_fails_before_any_step(tiny_checkpoint, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": 1, "completion": "b"}\n')
    with pytest.raises(TrainError, match=r"d\.jsonl:2: 'prompt' must be a string"):
        _run(tiny_checkpoint, data, tmp_path / "out")
    assert not (tmp_path / "out" / "train_log.jsonl").exists()


def test_yaml_config_and_flags(tmp_path):
    path = tmp_path / "tune.yaml"
    path.write_text("model: m\ndata: d.jsonl\nrank: 16\nschedule: linear\n")
    cfg = TuneConfig.load(path, {"rank": 4, "lr": None})
    assert (cfg.rank, cfg.schedule, cfg.lr) == (4, "linear", 2e-4)
    # Paths in the YAML are relative to it; a model that is not there may be a hub id. Flags stay as given.
    assert (cfg.data, cfg.model) == (str(tmp_path / "d.jsonl"), "m")
    (tmp_path / "m").mkdir()
    assert TuneConfig.load(path).model == str(tmp_path / "m")
    assert TuneConfig.load(path, {"data": "other.jsonl"}).data == "other.jsonl"
    path.write_text("model: m\ndata: d.jsonl\nranks: 16\n")
    with pytest.raises(TrainError, match=r"unknown setting\(s\) \['ranks'\]"):
        TuneConfig.load(path)
    path.write_text("model: m\n  data: [\n")
    with pytest.raises(TrainError, match=r"tune\.yaml line \d+: not valid YAML"):
        TuneConfig.load(path)


def test_gradient_checkpointing_and_packing_give_the_same_update(tiny_checkpoint, qa_data, tmp_path):
    """Checkpointing recomputes activations, packing concatenates rows with attention and positions
    restarting at each one: neither may change what is learned (up to float rounding)."""
    common = dict(steps=3, dropout=0.0, batch_size=24, max_seq_len=2048)
    _run(tiny_checkpoint, qa_data, tmp_path / "plain", **common)
    _run(tiny_checkpoint, qa_data, tmp_path / "ckpt", gradient_checkpointing=True, **common)
    # All 24 rows packed into one sequence: the same tokens, targets and loss normaliser as the padded batch.
    _run(tiny_checkpoint, qa_data, tmp_path / "packed", packing=True, **common)
    plain = _adapter(tmp_path / "plain")
    for other in ("ckpt", "packed"):
        got = _adapter(tmp_path / other)
        for key in plain:
            assert torch.allclose(plain[key], got[key], atol=1e-5), (other, key, (plain[key] - got[key]).abs().max())


def test_summary_counts_train_and_validation_rows_apart(tiny_checkpoint, qa_data, tmp_path):
    """`val_fraction` takes its rows out of --data: 24 rows at 0.25 are 18 to train on and 6 held out."""
    result = _run(tiny_checkpoint, qa_data, tmp_path / "out", steps=1, val_fraction=0.25)
    assert (result.train_rows, result.val_rows) == (18, 6)
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert (summary["rows_read"], summary["train_rows"], summary["val_rows"]) == (24, 18, 6)
