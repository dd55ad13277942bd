"""Prompt files and a linter that applies OpenAI's prompt-engineering practices.

Public API (stable; `tunelab.evals` codes against it):
    load_prompt(path) -> PromptFile
    render(prompt_file, variables, examples=None) -> str | list[dict]
    lint_text(text, *, path, task, params, variables) -> list[Finding]
    lint_file(path) -> list[Finding]
"""

from tunelab.prompts.config import LintConfig, find_config
from tunelab.prompts.errors import PromptError
from tunelab.prompts.finding import Finding
from tunelab.prompts.linter import lint_file, lint_paths, lint_prompt, lint_text
from tunelab.prompts.prompt_file import PromptFile, load_prompt
from tunelab.prompts.render import render
from tunelab.prompts.rules import RULES

__all__ = [
    "Finding", "LintConfig", "PromptError", "PromptFile", "RULES", "find_config", "lint_file", "lint_paths",
    "lint_prompt", "lint_text", "load_prompt", "render",
]
