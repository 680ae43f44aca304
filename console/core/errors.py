"""Errors the services layer raises; the API and the views turn them into clear answers."""

from __future__ import annotations


class Refused(Exception):
    """A services-layer refusal: ``status`` 400 (bad input, about ``field``) or 409 (state).

    The API's exception handler turns it into ``{field: [message]}`` or ``{"detail": ...}``;
    views show ``message`` next to ``field`` in their form.
    """

    status = 409

    def __init__(
        self, message: str, *, status: int | None = None, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.message, self.field = message, field
        if status is not None:
            self.status = status
