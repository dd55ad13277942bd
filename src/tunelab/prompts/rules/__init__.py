"""The lint rules, in the order of OpenAI's practices."""

from tunelab.prompts.rules.base import LintContext, Rule
from tunelab.prompts.rules.format import FEW_SHOT, LEADING_WORDS, SHOW_FORMAT
from tunelab.prompts.rules.params import PARAMS
from tunelab.prompts.rules.placement import DELIMIT_CONTEXT, INSTRUCTIONS_FIRST
from tunelab.prompts.rules.template import TEMPLATE
from tunelab.prompts.rules.wording import BE_SPECIFIC, FLUFFY_WORDING, SAY_WHAT_TO_DO

RULES: tuple[Rule, ...] = (
    INSTRUCTIONS_FIRST, DELIMIT_CONTEXT, BE_SPECIFIC, SHOW_FORMAT, FEW_SHOT,
    FLUFFY_WORDING, SAY_WHAT_TO_DO, LEADING_WORDS, PARAMS, TEMPLATE,
)
RULES_BY_ID = {rule.id: rule for rule in RULES}

__all__ = ["RULES", "RULES_BY_ID", "LintContext", "Rule"]
