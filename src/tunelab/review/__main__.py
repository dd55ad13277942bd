"""`python -m tunelab.review review serve ...`: the review commands alone, without the rest of the CLI
(tests start the server this way so another package's import cannot break them)."""

import typer

from tunelab.review.commands import register

app = typer.Typer(pretty_exceptions_enable=False)
register(app, typer.Typer())
app()
