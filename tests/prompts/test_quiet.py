"""The linter is trusted in CI only if it is quiet on well-written prompts."""

import pytest

from tunelab.prompts import lint_text

GOOD = {
    "summary.prompt": (
        "Summarize the article below as 3 bullet points for a busy executive. Each bullet is one sentence of at most 20 words.\n\n"
        'Article: """\n{{ article }}\n"""\n'),
    "entities.prompt": (
        "Extract the important entities mentioned in the text below. First extract all company names, then all people names.\n\n"
        "Desired format:\nCompany names: <comma_separated_list>\nPeople names: <comma_separated_list>\n\n"
        "###\n{{ text }}\n###\n"),
    "support.yaml": (
        "task: chat\nparams:\n  model: gpt-4o-mini\n  temperature: 0.3\n  max_tokens: 400\n"
        "messages:\n  - role: system\n    content: |\n"
        "      You are a support agent for Acme Cloud. Diagnose the customer's problem and suggest one fix in at most 4 sentences.\n"
        "      Never ask for a password; instead, link the reset page https://acme.example/reset.\n"
        "      If the question is not about Acme Cloud, say you can only help with Acme Cloud.\n"
        "  - role: user\n    content: \"{{ message }}\"\n"),
    "classify.yaml": (
        "task: classification\nparams:\n  temperature: 0\n  max_tokens: 3\n  stop: [\"\\n\"]\n"
        "variables: [review]\n"
        "template: |\n  Classify the sentiment of the review as positive, negative or mixed.\n\n  {{ examples }}\n\n"
        "  Review: \"\"\"{{ review }}\"\"\"\n  Sentiment:\n"
        "examples:\n  - review: The pasta was perfect.\n    sentiment: positive\n"
        "  - review: Rude staff, cold food.\n    sentiment: negative\n"
        "  - review: Great view but slow service.\n    sentiment: mixed\n"),
    "sql.prompt": (
        "Write a PostgreSQL query that lists the 10 customers with the highest total order amount in 2024.\n\n"
        "Tables:\n- customers(id, name)\n- orders(id, customer_id, amount, created_at)\n\nSELECT"),
    "python.prompt": (
        "# Write a Python function that parses an ISO 8601 date string and returns a datetime.date.\n"
        "# Raise ValueError with the bad input in the message when the string is not a date.\n\n"
        "```python\nimport"),
    "poem.prompt": (
        "Write a short, inspiring poem about the launch of our text-to-image model, focusing on what it lets artists do, "
        "in the style of {{ poet }}.\n"),
    "qa.yaml": (
        "task: qa\nparams:\n  temperature: 0\n  max_tokens: 200\n"
        "messages:\n  - role: system\n    content: |\n"
        "      Answer the question using only the manual excerpt, in at most 3 sentences.\n"
        "      If the excerpt does not contain the answer, reply exactly \"Not in the manual.\"\n"
        "  - role: user\n    content: |\n      <manual>\n      {{ excerpt }}\n      </manual>\n"
        "      <question>{{ question }}</question>\n"),
    "rewrite.prompt": (
        "Rewrite the release notes below for non-technical customers in a friendly tone, as at most 5 bullet points.\n"
        "Avoid internal ticket numbers; refer to each change by what the customer will notice.\n\n"
        "<notes>\n{{ notes }}\n</notes>\n"),
    "translate.prompt": (
        "Translate English to French. Answer with the French word only.\n\n"
        "English: cheese\nFrench: fromage\n\nEnglish: bread\nFrench: pain\n\nEnglish: {{ word }}\nFrench:\n"),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_well_written_prompt_has_no_findings(name):
    findings = lint_text(GOOD[name], path=name)
    assert findings == [], [(f.rule, f.line, f.message) for f in findings]
