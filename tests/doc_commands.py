"""The shell commands shown in README.md and docs/*.md, as a test can run them.

`commands(page)` reads a page's fenced bash/console blocks and returns its commands: backslash continuations
joined, `$ ` prompts stripped, trailing `# comments` dropped, and the output lines of console transcripts (lines
without a `$ ` prompt in a block that has prompts) skipped. `run(command, cwd)` runs a `tunelab ...` command with
this interpreter, so it runs the checkout under test.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands(page: Path) -> list[str]:
    found = []
    for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", page.read_text(), re.S):
        prompted = any(line.startswith("$ ") for line in block.splitlines())
        for line in _logical_lines(block):
            if prompted and not line.startswith("$ "):
                continue  # output shown in a transcript
            line = line.removeprefix("$ ").strip()
            if line.startswith("#") or not line:
                continue
            found.append(_strip_comment(line))
    return found


def files(page: Path) -> dict[str, str]:
    """Files a page shows whole: a fenced block whose first line is a comment naming the file (`# tune.yaml`)."""
    out = {}
    for body in re.findall(r"```\w*\n(.*?)```", page.read_text(), re.S):
        first = body.splitlines()[0] if body else ""
        m = re.fullmatch(r"#\s*([\w.-]+\.(?:yaml|yml|jsonl|json))\s*", first)
        if m:
            out[m.group(1)] = body
    return out


def run(command: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    argv = shlex.split(command)
    assert argv[0] == "tunelab", command
    return subprocess.run([sys.executable, "-m", "tunelab", *argv[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _logical_lines(block: str) -> list[str]:
    """One entry per command: continuations joined, a here-document kept whole with its command."""
    lines, pending, heredoc = [], "", None
    for raw in block.splitlines():
        if heredoc is not None:
            lines[-1] += "\n" + raw
            heredoc = None if raw.strip() == heredoc else heredoc
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
        m = re.search(r"<<-?'?(\w+)'?", raw)
        heredoc = m.group(1) if m else None
    return lines


def _strip_comment(line: str) -> str:
    """Drop a trailing `# comment` (the docs write them after whitespace, never inside an argument)."""
    first, nl, rest = line.partition("\n")
    return re.split(r"\s+#(?:\s|$)", first)[0].rstrip() + nl + rest
