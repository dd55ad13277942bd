"""Training checkpoints: everything needed to continue bit for bit.

`OUT/checkpoints/step-N/` holds the adapter in PEFT format (for people and other
tools), the exact trainable tensors (`trainable.safetensors`, by parameter name),
the optimizer and scheduler (`optimizer.pt`, read back with weights_only=True), the
RNG states and the data position (`trainer_state.json`). A checkpoint is written in
a temporary directory and renamed into place, so a kill at any moment leaves either
the previous complete checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tunelab.lora import save_adapter
from tunelab.train.config import TrainError

STATE_FILE = "trainer_state.json"


def save_checkpoint(out: Path, step: int, model, optimizer, scheduler, batches) -> Path:
    root = Path(out) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_adapter(model, tmp)
    trainable = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, str(tmp / "trainable.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    torch.save(_rng_state(), tmp / "rng.pt")
    state = {"step": step, "data": batches.state(), "python_rng": _python_rng()}
    (tmp / STATE_FILE).write_text(json.dumps(state))
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return None
    complete = [p for p in root.glob("step-*") if (p / STATE_FILE).exists() and p.name[5:].isdigit()]
    return max(complete, key=lambda p: int(p.name[5:]), default=None)


def restore_checkpoint(path: Path, model, optimizer, scheduler, batches) -> int:
    state = json.loads((path / STATE_FILE).read_text())
    tensors = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    if missing:
        raise TrainError(f"{path}: checkpoint lacks {missing[:4]}; was it written with other --targets or --rank?")
    with torch.no_grad():
        for name, tensor in tensors.items():
            if name not in params or params[name].shape != tensor.shape:
                got = tuple(params[name].shape) if name in params else "no such parameter"
                raise TrainError(f"{path}: {name} has shape {tuple(tensor.shape)} in the checkpoint, model: {got}")
            params[name].copy_(tensor)
    saved = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    _set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    random.setstate(_tuple(state["python_rng"]))
    batches.restore(state["data"])
    return int(state["step"])


def _rng_state():
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_rng():
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _tuple(saved):
    version, internal, gauss = saved
    return (version, tuple(internal), gauss)


def _fsync_dir(path: Path) -> None:
    for f in Path(path).iterdir() if Path(path).is_dir() else []:
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
