"""The API lists' pagination: ``?limit=&offset=`` with both bounded (never a database error)."""

from __future__ import annotations

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request

from console.core.filtersets import INT_MAX


class HavenPagination(LimitOffsetPagination):
    """50 objects a page by default, at most 1000; an offset past any database's range is a 400."""

    max_limit = 1000

    def get_offset(self, request: Request) -> int:
        offset = super().get_offset(request)
        if offset > INT_MAX // 2:
            raise ValidationError(
                {
                    self.offset_query_param: [
                        f"out of range: give an offset of at most {INT_MAX // 2}"
                    ]
                }
            )
        return offset
