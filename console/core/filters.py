"""Query-parameter filters shared by the API lists (and, later, the UI lists).

A view lists its ``filterset_fields``; each becomes an exact-match query parameter
(``?state=online&cluster=3``). A value that does not fit the field is a 400 naming it.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import connection, models
from rest_framework.exceptions import ValidationError as ApiValidationError
from rest_framework.filters import BaseFilterBackend
from rest_framework.request import Request

# The widest integer any supported database stores (SQLite and PostgreSQL bigint): a filter
# value outside it can match nothing, and SQLite's driver would fail on it (OverflowError).
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def check_int_range(value: Any, field: models.Field[Any, Any] | None = None) -> None:
    """Raise ValidationError for a whole number the database (or the field's column) cannot
    hold."""
    if not isinstance(value, int) or isinstance(value, bool):
        return
    low, high = INT_MIN, INT_MAX
    if field is not None:
        column_low, column_high = connection.ops.integer_field_range(field.get_internal_type())
        low, high = max(low, column_low or low), min(high, column_high or high)
    if not low <= value <= high:
        raise ValidationError(
            f"out of range: give a whole number between {low} and {high}", code="range"
        )


def _model_field(model: type[models.Model], path: str) -> models.Field[Any, Any]:
    parts = path.split("__")
    field: Any = None
    for i, part in enumerate(parts):
        field = model._meta.get_field(part)
        if i < len(parts) - 1:
            model = field.related_model
    if field.is_relation:
        return field.target_field  # type: ignore[no-any-return]
    return field  # type: ignore[no-any-return]


class FieldFilterBackend(BaseFilterBackend):
    def filter_queryset(self, request: Request, queryset: Any, view: Any) -> Any:
        errors: dict[str, str] = {}
        for name in getattr(view, "filterset_fields", ()):
            if name not in request.query_params:
                continue
            raw = request.query_params[name]
            field = _model_field(queryset.model, name)
            try:
                value = field.to_python(raw)
                check_int_range(value, field)
                if isinstance(field, models.CharField) and field.choices:
                    field.run_validators(value)
                    field.validate(value, None)
            except ValidationError as exc:
                errors[name] = f"{raw!r} is not a valid value: {' '.join(exc.messages)}"
                continue
            queryset = queryset.filter(**{name: value})
        if errors:
            raise ApiValidationError(errors)
        return queryset

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        params = []
        model = getattr(getattr(view, "queryset", None), "model", None)
        for name in getattr(view, "filterset_fields", ()):
            schema_type = "string"
            if model is not None:
                try:
                    field = _model_field(model, name)
                except FieldDoesNotExist:
                    field = None
                if isinstance(field, models.BooleanField):
                    schema_type = "boolean"
                elif isinstance(field, models.IntegerField | models.AutoField):
                    schema_type = "integer"
            params.append(
                {
                    "name": name,
                    "in": "query",
                    "required": False,
                    "description": f"Only objects whose {name} equals this value.",
                    "schema": {"type": schema_type},
                }
            )
        return params
