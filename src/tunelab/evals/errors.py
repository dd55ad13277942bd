"""The one error type of the evals package: every message names the file, line
or field at fault and what was expected."""


class EvalError(Exception):
    """Bad evaluation input (config, dataset, prompt) or an unusable results store."""
