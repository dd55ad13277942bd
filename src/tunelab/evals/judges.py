"""LLM judges: a rubric score per output, or a pairwise preference between two
variants' outputs for the same row.

Rubric: the judge writes its reasoning first and the score last (scoring after
the explanation is what makes the reasoning count), reference-guided when the
row has a `reference`; a `threshold` turns the score into pass/fail.

Pairwise: asked in both orders; a variant wins only if both orders pick it,
anything else is a tie (MT-Bench's position-swap rule, Zheng et al. 2023).

When the judge's provider supports it, the judge asks for structured output: a
JSON schema in `response_format` (reasoning first, then the score or the winner),
which a constrained decoder can always satisfy, so even a small local judge
returns something parseable. Replies are still parsed leniently (JSON,
"Score: N", "[[N]]", "[[A]]"), which is the whole story for providers without
structured output; an unparseable reply gets one follow-up asking for the
format, then the verdict is recorded as a parse failure with the raw text.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from tunelab.evals.config import JudgeConfig
from tunelab.evals.providers import Completion

VERSION = 2  # bump when prompts or parsing change: cached verdicts are then recomputed

# call(messages) or call(messages, response_format={...}) -> the judge model's reply
Call = Callable[..., Awaitable[Completion]]


class ParseError(ValueError):
    pass


@dataclass
class Verdict:
    score: float | None = None
    passed: bool | None = None
    winner: str | None = None           # pairwise: "A", "B" or "tie" (caller maps to variant ids)
    reasoning: str | None = None
    raw: list[str] = field(default_factory=list)
    parse_error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def judge_key(cfg: JudgeConfig, *inputs: Any, structured: bool = False) -> str:
    """Verdict-cache key: judge config (minus its id and variant selection), version,
    whether it asked for structured output, and what it reads."""
    conf = {"type": cfg.type, "provider": cfg.provider, "rubric": cfg.rubric, "scale": list(cfg.scale),
            "threshold": cfg.threshold, "params": cfg.params, "structured": structured}
    if cfg.type == "geval":   # G-Eval's own fields; other judges' keys stay as they were
        conf.update(steps=cfg.steps, top_logprobs=cfg.top_logprobs, n_samples=cfg.n_samples)
    return hashlib.sha256(json.dumps([conf, VERSION, inputs], sort_keys=True, default=str).encode()).hexdigest()


# ---- rubric ----------------------------------------------------------------

RUBRIC_SYSTEM = ("You are an impartial evaluator. Judge the assistant's answer against the rubric. "
                 "First explain your reasoning briefly, then give the score on the last line exactly as "
                 "'Score: N'. Do not give the score before the reasoning.")
RUBRIC_SYSTEM_JSON = ("You are an impartial evaluator. Judge the assistant's answer against the rubric. "
                      "Reply with a JSON object: first \"reasoning\" (brief), then \"score\" (an integer on the scale).")


def rubric_schema(scale: tuple[int, int]) -> dict[str, Any]:
    """`response_format` for a rubric verdict; `reasoning` comes first so it is written before the score."""
    return _json_format("rubric_verdict", {
        "reasoning": {"type": "string"},
        "score": {"type": "integer", "minimum": scale[0], "maximum": scale[1]},
    })


def rubric_messages(cfg: JudgeConfig, question: str, answer: str, reference: Any | None,
                    structured: bool = False) -> list[dict[str, str]]:
    lo, hi = cfg.scale
    parts = [f"[Rubric]\n{cfg.rubric}\n\n[Scale]\nAn integer from {lo} (worst) to {hi} (best).",
             f"[Question]\n{question}"]
    if reference is not None:
        parts.append(f"[Reference answer]\n{_text(reference)}\n(Use the reference to check correctness.)")
    parts.append(f"[Assistant's answer]\n{answer}")
    parts.append('Reply with a JSON object {"reasoning": "...", "score": N}.' if structured
                 else "Reasoning first, then the final line 'Score: N'.")
    system = RUBRIC_SYSTEM_JSON if structured else RUBRIC_SYSTEM
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


def parse_rubric(text: str, scale: tuple[int, int]) -> tuple[float, str]:
    """-> (score, reasoning). Accepts JSON {"reasoning", "score"}, 'Score: N', 'Rating: [[N]]'."""
    lo, hi = scale
    score: float | None = None
    reasoning = text
    obj = _last_json_object(text)
    if obj is not None:
        for key in ("score", "rating", "grade"):
            if isinstance(obj.get(key), (int, float)) and not isinstance(obj.get(key), bool):
                score = float(obj[key])
                reasoning = str(obj.get("reasoning") or obj.get("explanation") or text)
                break
    if score is None:
        found = (re.findall(r"(?:score|rating)\s*[:=]\s*\**\s*\[{0,2}\s*(-?\d+(?:\.\d+)?)", text, re.IGNORECASE)
                 or re.findall(r"\[\[\s*(-?\d+(?:\.\d+)?)\s*\]\]", text))
        if found:
            score = float(found[-1])  # the last one is the verdict; earlier ones may be quoted rubric
            reasoning = re.split(r"(?:score|rating)\s*[:=]|\[\[", text, flags=re.IGNORECASE)[0].strip() or text
    if score is None:
        raise ParseError("no score found (expected JSON {\"score\": N} or a line 'Score: N')")
    if not lo <= score <= hi:
        raise ParseError(f"score {score:g} is outside the scale [{lo}, {hi}]")
    return score, reasoning.strip()


async def judge_rubric(cfg: JudgeConfig, call: Call, question: str, answer: str, reference: Any | None,
                       *, structured: bool = False) -> Verdict:
    messages = rubric_messages(cfg, question, answer, reference, structured)
    v = Verdict()
    parsed = await _ask(call, messages, lambda t: parse_rubric(t, cfg.scale), v,
                        "Your reply could not be read. End with a final line exactly 'Score: N'.",
                        rubric_schema(cfg.scale) if structured else None)
    if parsed is not None:
        v.score, v.reasoning = parsed
        if cfg.threshold is not None:
            v.passed = v.score >= cfg.threshold
    return v


# ---- pairwise --------------------------------------------------------------

PAIRWISE_SYSTEM = ("You are an impartial judge comparing two AI assistants' answers to the same question. "
                   "Do not let the order of the answers, their length or the assistants' names influence you. "
                   "Explain your comparison briefly, then output your final verdict strictly as '[[A]]' if "
                   "assistant A is better, '[[B]]' if assistant B is better, or '[[C]]' for a tie.")
PAIRWISE_SYSTEM_JSON = ("You are an impartial judge comparing two AI assistants' answers to the same question. "
                        "Do not let the order of the answers, their length or the assistants' names influence you. "
                        "Reply with a JSON object: first \"reasoning\" (brief), then \"winner\": \"A\" if assistant "
                        "A is better, \"B\" if assistant B is better, \"C\" for a tie.")


def pairwise_schema() -> dict[str, Any]:
    return _json_format("pairwise_verdict", {"reasoning": {"type": "string"},
                                             "winner": {"type": "string", "enum": ["A", "B", "C"]}})


def pairwise_messages(cfg: JudgeConfig, question: str, first: str, second: str,
                      reference: Any | None, structured: bool = False) -> list[dict[str, str]]:
    parts = [f"[Criteria]\n{cfg.rubric}", f"[Question]\n{question}"]
    if reference is not None:
        parts.append(f"[Reference answer]\n{_text(reference)}")
    parts += [f"[Assistant A's answer]\n{first}", f"[Assistant B's answer]\n{second}",
              'Reply with a JSON object {"reasoning": "...", "winner": "A" | "B" | "C"} (C: a tie).' if structured
              else "Explain, then give the verdict: [[A]], [[B]] or [[C]]."]
    system = PAIRWISE_SYSTEM_JSON if structured else PAIRWISE_SYSTEM
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


def parse_pairwise(text: str) -> str:
    """-> 'A', 'B' or 'tie'."""
    obj = _last_json_object(text)
    if obj is not None and isinstance(obj.get("winner"), str):
        w = obj["winner"].strip().upper()
        if w in ("A", "B"):
            return w
        if w in ("C", "TIE"):
            return "tie"
    found = re.findall(r"\[\[\s*([ABC]|tie)\s*\]\]", text, re.IGNORECASE)
    if not found:
        raise ParseError("no verdict found (expected [[A]], [[B]] or [[C]])")
    w = found[-1].upper()
    return "tie" if w in ("C", "TIE") else w


def combine_orders(first_order: str, swapped_order: str) -> str:
    """Position-swap rule. `first_order` judged (A=x, B=y); `swapped_order` judged (A=y, B=x).
    -> 'A' (x wins), 'B' (y wins) or 'tie'. A win needs both orders to agree."""
    unswapped = {"A": "B", "B": "A", "tie": "tie"}[swapped_order]
    return first_order if first_order == unswapped and first_order != "tie" else "tie"


async def judge_pairwise(cfg: JudgeConfig, call: Call, question: str, out_x: str, out_y: str,
                         reference: Any | None, *, structured: bool = False) -> Verdict:
    v = Verdict()
    retry = "Your reply could not be read. End with exactly one of [[A]], [[B]] or [[C]]."
    fmt = pairwise_schema() if structured else None
    first = await _ask(call, pairwise_messages(cfg, question, out_x, out_y, reference, structured), parse_pairwise,
                       v, retry, fmt)
    if first is None:
        return v
    second = await _ask(call, pairwise_messages(cfg, question, out_y, out_x, reference, structured), parse_pairwise,
                        v, retry, fmt)
    if second is None:
        return v
    v.winner = combine_orders(first, second)
    v.reasoning = f"order x,y: {first}; order y,x: {second}"
    return v


# ---- shared ----------------------------------------------------------------

async def _ask(call: Call, messages: list[dict[str, str]], parse: Callable[[str], Any], v: Verdict,
               nudge: str, response_format: dict[str, Any] | None = None) -> Any:
    """One call, one format follow-up if needed; failures are recorded on `v`."""
    ask = call if response_format is None else (lambda m: call(m, response_format=response_format))
    reply = await ask(messages)
    _count(v, reply)
    try:
        return parse(reply.text)
    except ParseError:
        follow_up = messages + [{"role": "assistant", "content": reply.text}, {"role": "user", "content": nudge}]
        reply2 = await ask(follow_up)
        _count(v, reply2)
        try:
            return parse(reply2.text)
        except ParseError as exc:
            v.parse_error = f"unparseable judge reply after one retry: {exc}"
            return None


def _count(v: Verdict, c: Completion) -> None:
    v.raw.append(c.text)
    v.prompt_tokens += c.prompt_tokens or 0
    v.completion_tokens += c.completion_tokens or 0


def _last_json_object(text: str) -> dict[str, Any] | None:
    # Judges often wrap JSON in prose or code fences; try each {...} from the last.
    for match in reversed(list(re.finditer(r"\{[^{}]*\}", text, re.DOTALL))):
        try:
            obj = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _json_format(name: str, properties: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def _text(value: Any) -> str:
    return " | ".join(map(str, value)) if isinstance(value, list) else str(value)
