"""One tiny served model (llama family, plus a random LoRA adapter "alpha") shared by the server's test files."""

from __future__ import annotations

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from http_server import MODEL, Server, make_peft_adapter
from tunelab.engine import LLM, AsyncLLM
from tunelab.serve import create_app


@pytest.fixture(scope="session")
def tiny_server(tiny_checkpoint, tmp_path_factory):
    base = tiny_checkpoint("llama")
    adapter_dir = tmp_path_factory.mktemp("adapter") / "alpha"
    peft_model = make_peft_adapter(base, adapter_dir, 3)
    engine = AsyncLLM(LLM(base, block_size=4, max_num_seqs=32, adapters={"alpha": str(adapter_dir)}))
    server = Server(create_app(engine, MODEL))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)
    ref = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    yield {"url": server.url, "client": client, "engine": engine, "ref": ref, "peft": peft_model,
           "hf_tok": AutoTokenizer.from_pretrained(base), "path": base}
    server.stop()
    engine.shutdown()
