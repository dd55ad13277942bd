#!/usr/bin/env bash
# The GPU checks (CI has no GPU), from the repository root on a CUDA machine with torch, triton and transformers:
# correctness of CUDA-graph decoding (with tunelab's Triton operators and without), a profile of one graphed decode
# step of a random TinyLlama-1.1B-shaped model in bf16 (both ways), cuBLAS against a Triton matrix-vector product on
# that model's shapes, the Triton kernels' own tests, then the engine bench (batch-1 memory-bandwidth utilisation,
# CUDA graphs on vs off, 32 concurrent requests). docs/benchmarks.md has the figures.
set -o pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"
status=0
python3 scripts/gpu_check.py || status=1
python3 -m pytest -q -p no:cacheprovider tests/engine/test_gpu_kernels.py || status=1
model=$(mktemp -d)
python3 -c "import sys; from pathlib import Path; from tunelab.engine.bench import write_random_llama
write_random_llama(Path(sys.argv[1]), layers=22, hidden=2048, heads=32, kv_heads=4)" "$model" || exit 1
python3 scripts/gpu_check.py --profile "$model" || status=1
python3 scripts/gpu_check.py --gemv || status=1
python3 -m tunelab bench generate --device cuda --dtype bfloat16 --model "$model" --requests 32 --prompt-tokens 128 \
  --new-tokens 128 --single-tokens 256 --repeat 2 --hf-sample 2 "$@" || status=1
exit $status
