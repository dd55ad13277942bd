"""Prompt pairs for every rule: a less effective version (with the expected span
marked ⟦like this⟧) and a better version of the same request. Written for tunelab.

Each entry: (rule, name, bad, good, path). `path` picks the parser: .prompt is a
plain template, .yaml a YAML prompt file."""

START, END = "⟦", "⟧"


def unmark(text: str):
    """Strip the ⟦ ⟧ markers from a prompt and return (text, expected span).

    The span is 1-based (line, column, end_line, end_column) with end_column exclusive,
    computed here from string offsets, independently of the linter's own mapping."""
    start = text.index(START)
    end = text.index(END) - len(START)
    clean = text.replace(START, "").replace(END, "")

    def position(offset):
        line = clean.count("\n", 0, offset) + 1
        column = offset - (clean.rfind("\n", 0, offset) + 1) + 1
        return line, column

    return clean, (*position(start), *position(end))


T, Y = "p.prompt", "p.yaml"

PAIRS = [
    # --- instructions-first (practice 2) ---
    ("instructions-first", "summary-after-article",
     "{{ article }}\n\n⟦Summarize the article above in 3 bullet points.⟧\n",
     'Summarize the article below in 3 bullet points.\n\n"""\n{{ article }}\n"""\n', T),
    ("instructions-first", "reply-after-email",
     'Email: """\n{{ email }}\n"""\n⟦Write a polite reply to this email in under 120 words.⟧\n',
     'Write a polite reply to the email below in under 120 words.\n\nEmail: """\n{{ email }}\n"""\n', T),
    ("instructions-first", "chat-ticket",
     "messages:\n  - role: user\n    content: |\n      <ticket>\n      {{ ticket }}\n      </ticket>\n"
     "      ⟦Classify the ticket as billing, technical or other.⟧\n",
     "messages:\n  - role: system\n    content: Classify the ticket as billing, technical or other.\n"
     "  - role: user\n    content: |\n      <ticket>\n      {{ ticket }}\n      </ticket>\n", Y),
    ("instructions-first", "pasted-article",
     "Article:\nThe city council voted on Tuesday to extend the bike lane network across the north side, adding "
     "twelve kilometres of protected lanes and three new crossings near schools over the next two years.\n\n"
     "⟦Translate the article into French.⟧\n",
     'Translate the article below into French.\n\nArticle: """\nThe city council voted on Tuesday to extend the bike '
     "lane network across the north side, adding twelve kilometres of protected lanes and three new crossings near "
     'schools over the next two years.\n"""\n', T),
    ("instructions-first", "hash-fenced-code",
     "###\n{{ code }}\n###\n⟦Explain what this code does in two sentences for a junior developer.⟧\n",
     "Explain what the code below does in two sentences for a junior developer.\n###\n{{ code }}\n###\n", T),

    # --- delimit-context (practice 2) ---
    ("delimit-context", "bare-review",
     "Summarize the review below in one sentence.\n\n⟦{{ review }}⟧\n",
     'Summarize the review below in one sentence.\n\n"""\n{{ review }}\n"""\n', T),
    ("delimit-context", "labelled-message",
     "Translate the message below into Spanish.\nMessage: ⟦{{ message }}⟧\n",
     "Translate the message below into Spanish.\nMessage: <message>{{ message }}</message>\n", T),
    ("delimit-context", "single-brace-contract",
     "Extract every date in the contract below, one per line.\n\n⟦{contract}⟧\n",
     "Extract every date in the contract below, one per line.\n###\n{contract}\n###\n", T),
    ("delimit-context", "chat-document",
     "messages:\n  - role: system\n    content: Answer the question using only the document.\n  - role: user\n"
     "    content: |\n      Document:\n      ⟦{{ document }}⟧\n\n      Question: {{ question }}\n",
     "messages:\n  - role: system\n    content: Answer the question using only the document.\n  - role: user\n"
     "    content: |\n      <document>\n      {{ document }}\n      </document>\n      <question>{{ question }}</question>\n", Y),
    ("delimit-context", "pasted-email",
     "Summarize the email below in two sentences.\n\nEmail:\n⟦Hi team, the quarterly review moved to Thursday at 3pm because "
     "the finance numbers are late. Please bring your updated forecasts and the hiring plan for next quarter.⟧\n",
     'Summarize the email below in two sentences.\n\nEmail:\n"""\nHi team, the quarterly review moved to Thursday at 3pm '
     "because the finance numbers are late. Please bring your updated forecasts and the hiring plan for next quarter.\n"
     '"""\n', T),

    # --- be-specific (practice 3) ---
    ("be-specific", "poem", "⟦Write a poem about our company.⟧\n",
     "Write a short, inspiring poem about our company's first product launch, in the style of Mary Oliver.\n", T),
    ("be-specific", "product-description", "⟦Write a product description for {{ product }}.⟧\n",
     "Write a 50-word product description of {{ product }} for first-time home bakers, in a warm tone.\n", T),
    ("be-specific", "office-move-email", "⟦Draft an email announcing the office move.⟧\n",
     "Draft a three-paragraph email announcing the office move to all employees, in a friendly, reassuring tone.\n", T),
    ("be-specific", "meeting-notes",
     '⟦Summarize the meeting notes.⟧\n\n"""\n{{ notes }}\n"""\n',
     'Summarize the meeting notes below as 5 bullet points for people who missed the meeting.\n\n"""\n{{ notes }}\n"""\n', T),
    ("be-specific", "bakery-names", "⟦Come up with names for the bakery.⟧\n",
     "Come up with 5 playful names for a neighbourhood sourdough bakery.\n", T),

    # --- show-format (practice 4) ---
    ("show-format", "entities",
     '⟦Extract the company names and people mentioned in the text below.⟧\n\nText: """\n{{ text }}\n"""\n',
     "Extract the company names and people mentioned in the text below.\n\nDesired format:\n"
     'Company names: <comma_separated_list>\nPeople: <comma_separated_list>\n\nText: """\n{{ text }}\n"""\n', T),
    ("show-format", "invoice-json",
     "⟦Return the invoice number, date and total as JSON.⟧\n\n<invoice>\n{{ invoice }}\n</invoice>\n",
     "Return the invoice as JSON with the keys invoice_number, date (YYYY-MM-DD) and total (a number).\n\n"
     "<invoice>\n{{ invoice }}\n</invoice>\n", T),
    ("show-format", "medications",
     '⟦List all the medications mentioned in the note.⟧\n\nNote:\n"""\n{{ note }}\n"""\n',
     'List all the medications mentioned in the note below, one per line, in the format: <name> (<dose>)\n\n'
     'Note:\n"""\n{{ note }}\n"""\n', T),
    ("show-format", "addresses-with-examples",
     "template: |\n  ⟦Pull out the city and country from the address below.⟧\n\n  ###\n  {{ address }}\n  ###\n",
     "template: |\n  Pull out the city and country from the address below.\n\n  {{ examples }}\n\n  ###\n  {{ address }}\n  ###\n"
     "examples:\n  - address: 10 Downing Street, London SW1A 2AA\n    output: London, United Kingdom\n"
     "  - address: 1600 Amphitheatre Pkwy, Mountain View, CA\n    output: Mountain View, United States\n", Y),

    # --- few-shot-consistency (practice 5) ---
    ("few-shot-consistency", "label-spelling",
     "Classify the sentiment of each review as positive or negative.\n\nReview: The soup was cold.\nSentiment: negative\n\n"
     "Review: Lovely staff and quick service.\n⟦sentiment -⟧ positive\n\nReview: {{ review }}\nSentiment:\n",
     "Classify the sentiment of each review as positive or negative.\n\nReview: The soup was cold.\nSentiment: negative\n\n"
     "Review: Lovely staff and quick service.\nSentiment: positive\n\nReview: {{ review }}\nSentiment:\n", T),
    ("few-shot-consistency", "answer-casing",
     "Classify each ticket as billing or technical.\n\nTicket: I was charged twice.\nCategory: billing\n\n"
     "Ticket: The app crashes on login.\nCategory: technical\n\nTicket: Refund my last invoice.\nCategory: ⟦Billing⟧\n\n"
     "Ticket: {{ ticket }}\nCategory:\n",
     "Classify each ticket as billing or technical.\n\nTicket: I was charged twice.\nCategory: billing\n\n"
     "Ticket: The app crashes on login.\nCategory: technical\n\nTicket: Refund my last invoice.\nCategory: billing\n\n"
     "Ticket: {{ ticket }}\nCategory:\n", T),
    ("few-shot-consistency", "separators",
     "Translate English to French.\n\nEnglish: cheese\nFrench: fromage\n###\nEnglish: bread\nFrench: pain\n###\n"
     "English: apple\nFrench: pomme\n---\n⟦English: {{ word }}⟧\nFrench:\n",
     "Translate English to French.\n\nEnglish: cheese\nFrench: fromage\n###\nEnglish: bread\nFrench: pain\n###\n"
     "English: apple\nFrench: pomme\n###\nEnglish: {{ word }}\nFrench:\n", T),
    ("few-shot-consistency", "no-open-slot",
     "Q: What is the capital of France?\nA: Paris\n\nQ: What is 2 + 2?\nA: 4\n\nQ: Who wrote Hamlet?\n⟦A: Shakespeare⟧\n",
     "Q: What is the capital of France?\nA: Paris\n\nQ: What is 2 + 2?\nA: 4\n\nQ: {{ question }}\nA:\n", T),
    ("few-shot-consistency", "yaml-example-keys",
     "template: |\n  Label each headline as sports or politics.\n\n  {{ examples }}\n\n  Headline: {{ headline }}\n  Label:\n"
     "examples:\n  - headline: Cup final goes to penalties\n    label: sports\n"
     "  - headline: Parliament passes budget\n    label: politics\n  - ⟦t⟧itle: Striker signs for rivals\n    label: sports\n",
     "template: |\n  Label each headline as sports or politics.\n\n  {{ examples }}\n\n  Headline: {{ headline }}\n  Label:\n"
     "examples:\n  - headline: Cup final goes to penalties\n    label: sports\n"
     "  - headline: Parliament passes budget\n    label: politics\n  - headline: Striker signs for rivals\n    label: sports\n", Y),

    # --- fluffy-wording (practice 6) ---
    ("fluffy-wording", "few-sentences", "Describe the product in ⟦a few sentences⟧.\n",
     "Describe the product in 3 to 5 sentences.\n", T),
    ("fluffy-wording", "fairly-short", "Answer the customer's question. Keep the answer ⟦fairly short⟧.\n",
     "Answer the customer's question. Keep the answer under 50 words.\n", T),
    ("fluffy-wording", "not-too-much-more", "Explain the error. Use ⟦not too much more⟧ than a paragraph.\n",
     "Explain the error in at most one paragraph of 80 words.\n", T),
    ("fluffy-wording", "several-ideas", "Give me ⟦several ideas⟧ for a team offsite.\n",
     "Give me 4 ideas for a team offsite, one per line.\n", T),
    ("fluffy-wording", "couple-of-bullets",
     "Here are a few examples of the tone we like: calm, plain, direct.\n\nWrite ⟦a couple of bullet points⟧ on the outage.\n",
     "Here are a few examples of the tone we like: calm, plain, direct.\n\nWrite 2 bullet points on the outage.\n", T),

    # --- say-what-to-do (practice 7) ---
    ("say-what-to-do", "shouted",
     "You are a support agent for Acme.\n\n⟦DO NOT ASK FOR THE USERNAME OR PASSWORD.⟧ DO NOT REPEAT YOURSELF.\n",
     "You are a support agent for Acme.\n\nNever ask for the password; instead, link the user to https://acme.example/reset.\n", T),
    ("say-what-to-do", "jargon",
     'Summarize the article below in 3 bullet points.\n\n⟦Don\'t use jargon.⟧\n\n"""\n{{ article }}\n"""\n',
     'Summarize the article below in 3 bullet points.\n\nDon\'t use jargon; write in plain words a 12-year-old would know.\n\n'
     '"""\n{{ article }}\n"""\n', T),
    ("say-what-to-do", "bullet-rule",
     "Answer questions about orders.\n\nRules:\n- ⟦Never guess the order status.⟧\n- Be polite.\n",
     "Answer questions about orders.\n\nRules:\n- Never guess the order status: if it is not in the order record, say you "
     "will check and reply within a day.\n- Be polite.\n", T),
    ("say-what-to-do", "avoid-long", "⟦Avoid long answers.⟧\n", "Avoid long answers; reply in at most 3 sentences.\n", T),
    ("say-what-to-do", "medical",
     "You are a pharmacy chatbot.\n\n⟦The assistant must not give medical advice.⟧\n",
     "You are a pharmacy chatbot.\n\nThe assistant must not give medical advice. If asked for a diagnosis, recommend "
     "seeing a doctor and share the NHS 111 number.\n", T),

    # --- leading-words (practice 8) ---
    ("leading-words", "python-function",
     "Write a Python function that converts miles to kilometres.\n⟦Use type hints.⟧\n",
     "Write a Python function that converts miles to kilometres.\nUse type hints.\n\n```python\ndef miles_to_km(", T),
    ("leading-words", "sql-query",
     "Write a SQL query that returns the ten customers with the highest total spend.\n\n"
     "Tables: customers(id, name), orders(id, customer_id, amount)\n⟦Query:⟧\n",
     "Write a SQL query that returns the ten customers with the highest total spend.\n\n"
     "Tables: customers(id, name), orders(id, customer_id, amount)\nSELECT", T),
    ("leading-words", "commented-spec",
     "# Python 3\n# Write a function that returns the n-th Fibonacci number.\n⟦# Return the result as an int.⟧\n",
     "# Python 3\n# Write a function that returns the n-th Fibonacci number.\n# Return the result as an int.\nimport", T),
    ("leading-words", "assistant-prefill",
     "messages:\n  - role: user\n    content: Write a Python script that prints the current date.\n"
     "  - role: assistant\n    content: \"⟦Sure, here is the script:⟧\"\n",
     "messages:\n  - role: user\n    content: Write a Python script that prints the current date.\n"
     "  - role: assistant\n    content: |\n      ```python\n      import\n", Y),
    ("leading-words", "bash-script",
     "Write a Bash script that backs up /var/www to S3 every night.\n⟦Keep it portable.⟧\n",
     "Write a Bash script that backs up /var/www to S3 every night.\nKeep it portable.\n#!/bin/bash\n", T),

    # --- params ---
    ("params", "temperature-extraction",
     "task: extraction\nparams:\n  ⟦temperature⟧: 0.8\ntemplate: |\n  Extract every email address in the text below, one per line.\n"
     "  ###\n  {{ text }}\n  ###\n",
     "task: extraction\nparams:\n  temperature: 0\ntemplate: |\n  Extract every email address in the text below, one per line.\n"
     "  ###\n  {{ text }}\n  ###\n", Y),
    ("params", "max-tokens-too-small",
     "params:\n  ⟦max_tokens⟧: 200\ntemplate: |\n  Write a 500-word blog post about composting for beginners.\n",
     "params:\n  max_tokens: 1000\ntemplate: |\n  Write a 500-word blog post about composting for beginners.\n", Y),
    ("params", "max-tokens-only-length",
     "params:\n  ⟦max_tokens⟧: 300\ntemplate: |\n  Write a friendly blog post about composting for beginners.\n",
     "params:\n  max_tokens: 400\ntemplate: |\n  Write a 200-word friendly blog post about composting for beginners.\n", Y),
    ("params", "no-stop",
     "⟦params⟧:\n  model: gpt-3.5-turbo-instruct\n  temperature: 0\ntemplate: |\n  English: cheese\n  French: fromage\n\n"
     "  English: bread\n  French: pain\n\n  English: {{ word }}\n  French:\n",
     "params:\n  model: gpt-3.5-turbo-instruct\n  temperature: 0\n  stop: [\"\\n\"]\ntemplate: |\n  English: cheese\n"
     "  French: fromage\n\n  English: bread\n  French: pain\n\n  English: {{ word }}\n  French:\n", Y),
    ("params", "temperature-qa",
     "params:\n  ⟦temperature⟧: 1.0\nmessages:\n  - role: system\n    content: Answer the question using only the manual.\n"
     "  - role: user\n    content: '{{ question }}'\n",
     "params:\n  temperature: 0\nmessages:\n  - role: system\n    content: Answer the question using only the manual.\n"
     "  - role: user\n    content: '{{ question }}'\n", Y),

    # --- template ---
    ("template", "misspelled-variable",
     "variables: [article]\ntemplate: |\n  Summarize the article below in 3 bullet points.\n  ###\n  ⟦{{ artcle }}⟧\n",
     "variables: [article]\ntemplate: |\n  Summarize the article below in 3 bullet points.\n  ###\n  {{ article }}\n", Y),
    ("template", "declared-unused",
     "variables:\n  - ⟦tone⟧\n  - text\ntemplate: |\n  Rewrite the text below in 2 sentences.\n  ###\n  {{ text }}\n",
     "variables:\n  - tone\n  - text\ntemplate: |\n  Rewrite the text below in 2 sentences, in a {{ tone }} tone.\n  ###\n  {{ text }}\n", Y),
    ("template", "unclosed-quotes",
     'Summarize the text below in one sentence.\n\nText: ⟦"""⟧\n{{ text }}\n',
     'Summarize the text below in one sentence.\n\nText: """\n{{ text }}\n"""\n', T),
    ("template", "unclosed-tag",
     "Answer the question using the document, in one sentence.\n\n⟦<document>⟧\n{{ doc }}\n\n<question>{{ q }}</question>\n",
     "Answer the question using the document, in one sentence.\n\n<document>\n{{ doc }}\n</document>\n\n<question>{{ q }}</question>\n", T),
    ("template", "jinja-syntax",
     "Rewrite the text below in plain English, in 2 sentences.\n###\n⟦{{ text⟧\n",
     "Rewrite the text below in plain English, in 2 sentences.\n###\n{{ text }}\n", T),
]
