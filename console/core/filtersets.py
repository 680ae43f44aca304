"""Filtersets: one class per list names every query parameter the list accepts, and serves both
the page's list view (console/core/generic.py) and the API's viewset (``FilterBackend``).

A filter is declared once, with the surfaces it is offered on (``PAGE``, ``API`` or both): where
the page and the API have always read a parameter differently (the event log's ``severity`` is
"this and worse" on the page and exact in the API) both meanings are declared side by side, so
neither changes. A value that does not fit is named in ``errors`` (the API answers 400 with it;
a page shows it or ignores the filter) and filters nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from django.core.exceptions import ValidationError
from django.db import connection, models
from rest_framework.exceptions import ValidationError as ApiValidationError
from rest_framework.filters import BaseFilterBackend
from rest_framework.request import Request

PAGE, API = "page", "api"
BOTH = frozenset({PAGE, API})

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


def model_field(model: type[models.Model], path: str) -> models.Field[Any, Any]:
    """The field at ``path`` (``cluster__name``); for a relation, the field it points at."""
    parts = path.split("__")
    field: Any = None
    for i, part in enumerate(parts):
        field = model._meta.get_field(part)
        if i < len(parts) - 1:
            model = field.related_model
    if field.is_relation:
        return field.target_field  # type: ignore[no-any-return]
    return field  # type: ignore[no-any-return]


class FilterError(ValueError):
    """A value a filter cannot take; ``message`` is what the person or script reads."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Filter:
    """One query parameter: ``parse`` reads its text (FilterError when it does not fit),
    ``apply`` narrows the queryset by the value. ``default`` applies when it is not given."""

    schema_type = "string"

    def __init__(
        self,
        *,
        param: str = "",
        surfaces: Iterable[str] = BOTH,
        default: str | None = None,
        description: str = "",
    ) -> None:
        self.param, self.surfaces, self.default = param, frozenset(surfaces), default
        self.description = description

    def bind(self, name: str, model: type[models.Model]) -> None:
        self.param = self.param or name

    def parse(self, raw: str) -> Any:
        return raw

    def apply(self, queryset: Any, value: Any) -> Any:
        raise NotImplementedError


class Exact(Filter):
    """The model field at ``path`` (the parameter's name by default) equals the value: the
    field's own parsing and, for a field with choices, its validation."""

    def __init__(self, path: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = path

    def bind(self, name: str, model: type[models.Model]) -> None:
        super().bind(name, model)
        self.path = self.path or name
        self.field = model_field(model, self.path)
        self.description = self.description or f"Only objects whose {self.param} equals this value."
        if isinstance(self.field, models.BooleanField):
            self.schema_type = "boolean"
        elif isinstance(self.field, models.IntegerField | models.AutoField):
            self.schema_type = "integer"

    def parse(self, raw: str) -> Any:
        field = self.field
        try:
            value = field.to_python(raw)
            check_int_range(value, field)
            if isinstance(field, models.CharField) and field.choices:
                field.run_validators(value)
                field.validate(value, None)
        except ValidationError as exc:
            raise FilterError(f"{raw!r} is not a valid value: {' '.join(exc.messages)}") from exc
        return value

    def apply(self, queryset: Any, value: Any) -> Any:
        return queryset.filter(**{self.path: value})


class Method(Filter):
    """A filter written as a function of the queryset and the parsed value; ``parse`` (a
    function raising FilterError) checks the text first."""

    def __init__(
        self,
        apply: Callable[[Any, Any], Any],
        parse: Callable[[str], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._apply, self._parse = apply, parse

    def parse(self, raw: str) -> Any:
        return self._parse(raw) if self._parse is not None else raw

    def apply(self, queryset: Any, value: Any) -> Any:
        return self._apply(queryset, value)


def one_of(what: str, choices: Iterable[str]) -> Callable[[str], str]:
    """A parser that takes one of ``choices`` ("'x' is not a sort; use one of a, b.")."""
    allowed = list(choices)

    def parse(raw: str) -> str:
        if raw not in allowed:
            raise FilterError(f"{raw!r} is not a {what}; use one of {', '.join(allowed)}.")
        return raw

    return parse


class FilterSet:
    """The filters of one list: ``fields`` are exact filters on those model paths (offered on
    ``fields_surfaces``); other filters are class attributes, named by the attribute unless
    they give their ``param``.

    ``FilterSet(params, queryset, surface=PAGE)``: ``qs`` is the narrowed queryset, ``errors``
    the parameters whose value did not fit and ``values`` the accepted text of each parameter
    (``filterset["q"]`` in a template); ``params()`` the non-default ones, for links.
    """

    model: ClassVar[type[models.Model]]
    fields: ClassVar[tuple[str, ...]] = ()
    #: where the ``fields`` are offered
    fields_surfaces: ClassVar[frozenset[str]] = BOTH
    filters: ClassVar[tuple[Filter, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: list[Filter] = []
        for name in cls.fields:
            exact = Exact(surfaces=cls.fields_surfaces)
            exact.bind(name, cls.model)
            found.append(exact)
        declared = {
            name: value
            for klass in reversed(cls.__mro__)
            for name, value in vars(klass).items()
            if isinstance(value, Filter)
        }
        for name, value in declared.items():
            value.bind(name, cls.model)
            found.append(value)
        cls.filters = tuple(found)

    @classmethod
    def offered(cls, surface: str) -> list[Filter]:
        return [f for f in cls.filters if surface in f.surfaces]

    def __init__(self, params: Mapping[str, Any], queryset: Any, *, surface: str = API) -> None:
        self.surface = surface
        self.errors: dict[str, str] = {}
        self.values: dict[str, str] = {}
        self._defaults: dict[str, str] = {}
        for f in self.offered(surface):
            raw = params.get(f.param) if f.param in params else None
            if raw is not None and surface == PAGE:  # a page's empty field filters nothing
                raw = str(raw).strip() or None
            if raw is None and f.default is not None:
                raw = self._defaults[f.param] = f.default
            if raw is None:
                continue
            try:
                value = f.parse(raw)
            except FilterError as exc:
                self.errors[f.param] = exc.message
                if f.default is None:
                    continue
                raw, value = f.default, f.parse(f.default)
            self.values[f.param] = raw
            queryset = f.apply(queryset, value)
        self.qs = queryset

    def __getitem__(self, param: str) -> str:
        if param not in {f.param for f in self.filters}:
            raise KeyError(param)  # a template then asks for the attribute of that name
        return self.values.get(param, "")

    def params(self) -> dict[str, str]:
        """The values given that differ from their default."""
        return {k: v for k, v in self.values.items() if self._defaults.get(k) != v}


class FilterBackend(BaseFilterBackend):
    """The API's side: the view's ``filterset_class`` on the query parameters; any value that
    does not fit is a 400 naming its parameter."""

    def filter_queryset(self, request: Request, queryset: Any, view: Any) -> Any:
        filterset_class = getattr(view, "filterset_class", None)
        if filterset_class is None:
            return queryset
        filtered = filterset_class(request.query_params, queryset, surface=API)
        if filtered.errors:
            raise ApiValidationError(filtered.errors)
        return filtered.qs

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        filterset_class = getattr(view, "filterset_class", None)
        if filterset_class is None:
            return []
        return [
            {
                "name": f.param,
                "in": "query",
                "required": False,
                "description": f.description,
                "schema": {"type": f.schema_type},
            }
            for f in filterset_class.offered(API)
        ]
