"""A judged eval before and after durable judging: 4 variants x N items with a rubric
judge, against tunelab's fake OpenAI-compatible server (a fixed delay per call; a
'small judge' that, asked in plain text, gives an unreadable reply for 60% of answers,
and returns schema-valid JSON when asked for structured output, as a constrained
decoder would).

    PYTHONPATH=src python scripts/bench_judged_eval.py [--src OTHER/src] [--items 200]

For the tree at --src (default: this one) it prints: the full run's wall time and
calls; a run SIGKILLed halfway through judging (at a known count of judge calls),
then resumed: the calls the resume makes, and those a plain rerun makes; and the
judge's parse failures. The fake server runs in this process; each eval is a
subprocess `python -m tunelab eval` with the chosen tree first on PYTHONPATH."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import yaml

from tunelab.evals.fake_server import FakeOpenAI, echo


def small_judge(body):
    msgs = body["messages"]
    if not any("[Assistant's answer]" in m["content"] for m in msgs):
        return echo(body)
    answer = msgs[1]["content"].split("[Assistant's answer]")[1]
    score = 1 + zlib.crc32(answer.encode()) % 10
    if body.get("response_format"):
        return json.dumps({"reasoning": "Checked the answer against the question.", "score": score})
    if zlib.crc32(answer.encode()) % 10 < 6:      # the same answer stays unreadable on the follow-up
        return "The answer looks reasonable and mostly addresses the question."
    return f"It addresses the question.\nScore: {score}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"))
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--plain-text", action="store_true", help="structured_output: false (the fallback path)")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=args.src)
    judge_total = 4 * args.items
    with FakeOpenAI(small_judge, delay_s=args.delay_ms / 1000) as server, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "data.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "n": i, "topic": f"topic {i % 37}"}) + "\n"
                                                for i in range(args.items)))
        provider = {"type": "openai", "base_url": server.base_url, "params": {"max_tokens": 32}}
        if args.plain_text:
            provider["structured_output"] = False
        (tmp / "eval.yaml").write_text(yaml.safe_dump({
            "dataset": "data.jsonl",
            "prompts": [{"id": "zero-shot", "template": "Question {{ n }}: explain {{ topic }} briefly."},
                        {"id": "few-shot", "template": "Example: topic X is Y.\nQuestion {{ n }}: explain {{ topic }}."}],
            "providers": [dict(provider, id="base", model="base"), dict(provider, id="lora", model="lora")],
            "metrics": ["length"],
            "judges": [{"id": "quality", "type": "rubric", "provider": "base"}],
            "concurrency": args.concurrency, "retry": {"max_retries": 0},
        }))

        def eval_cmd(db, *extra):
            return [sys.executable, "-m", "tunelab", "eval", str(tmp / "eval.yaml"), "--db", str(db), *extra]

        # 1. a full run
        server.reset()
        t = time.perf_counter()
        out = subprocess.run(eval_cmd(tmp / "full.db"), env=env, capture_output=True, text=True, timeout=1800)
        assert out.returncode == 0, out.stderr[-2000:]
        wall = time.perf_counter() - t
        flagged = [line for line in out.stderr.splitlines() if "WARNING" in line]
        full_calls = server.calls
        conn = sqlite3.connect(tmp / "full.db")
        verdicts, unparsed = conn.execute("SELECT COUNT(*), COUNT(parse_error) FROM verdicts").fetchone()
        conn.close()
        print(f"full run: {wall:.1f} s wall, {full_calls} calls ({4 * args.items} outputs, {verdicts} verdicts, "
              f"{unparsed} parse failures = {100 * unparsed / max(verdicts, 1):.0f}%); "
              f"CLI warning: {flagged[0].strip() if flagged else 'none'}")

        # 2. killed halfway through judging, then resumed; then a plain rerun
        server.reset()
        proc = subprocess.Popen(eval_cmd(tmp / "killed.db"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        outputs = 4 * args.items
        while server.calls < outputs + judge_total // 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before_kill = server.calls
        conn = sqlite3.connect(tmp / "killed.db")
        run_id, status = conn.execute("SELECT id, status FROM runs").fetchone()
        stored = conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]
        conn.close()
        listed = subprocess.run([sys.executable, "-m", "tunelab", "runs", "--db", str(tmp / "killed.db")], env=env,
                                capture_output=True, text=True).stdout.split()
        shown = next((w for w in listed if w in ("running", "interrupted", "failed", "complete")), status)
        server.reset()
        t = time.perf_counter()
        out = subprocess.run(eval_cmd(tmp / "killed.db", "--resume", run_id), env=env, capture_output=True, text=True,
                             timeout=1800)
        assert out.returncode == 0, out.stderr[-2000:]
        resume_wall, resume_calls = time.perf_counter() - t, server.calls
        server.reset()
        subprocess.run(eval_cmd(tmp / "killed.db"), env=env, capture_output=True, text=True, timeout=1800)
        print(f"killed after {before_kill} calls ({stored} verdicts stored, run shown as {shown!r}); "
              f"--resume: {resume_calls} calls, {resume_wall:.1f} s; plain rerun afterwards: {server.calls} calls")


if __name__ == "__main__":
    main()
