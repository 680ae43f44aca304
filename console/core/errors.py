"""Errors the services layer raises; the API and the views turn them into clear answers."""

from __future__ import annotations

from rest_framework import status
from rest_framework.exceptions import APIException


class Conflict(APIException):
    """The request is valid but the current state forbids it (409), e.g. a domain in use."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "This conflicts with the current state."
    default_code = "conflict"
