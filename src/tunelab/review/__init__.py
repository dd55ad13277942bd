"""Human review: tasks, a blinded rating app, and agreement statistics that validate
automated metrics against people."""

from tunelab.review.errors import ReviewError

__all__ = ["ReviewError"]
