"""The evals package's error for bad input: every message names the file, line
or field at fault and what was expected. (Provider failures are `providers.ProviderError`,
judge-reply parsing failures `judges.ParseError`.)"""


class EvalError(Exception):
    """Bad evaluation input (config, dataset, prompt) or an unusable results store."""
