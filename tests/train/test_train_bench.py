"""`tunelab bench train` runs end to end (tiny sizes) and both trainers compute the same loss."""

from tunelab.train.bench import REFERENCE, run_bench


def test_bench_train_small():
    summary = run_bench(steps=1, warmup=0, layers=1, hidden=64, seq=16, batch=2)
    assert summary["step_time_ratio"] > 0 and summary["train_memory_ratio"] > 0
    assert set(summary["step_s"]) == {"tunelab", REFERENCE}
    # Same model, data, LoRA and optimiser: after a step both trainers report the same loss.
    assert abs(summary["loss"]["tunelab"] - summary["loss"][REFERENCE]) < 1e-4
