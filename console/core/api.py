"""API base classes: one viewset and one serializer that every endpoint builds on."""

from __future__ import annotations

import copy
from typing import Any

from django.contrib.auth import authenticate
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, models, transaction
from django.db.models.deletion import ProtectedError, RestrictedError
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from console.core import auth, services
from console.core.errors import Refused
from console.core.filtersets import FilterSet
from console.core.models import ApiToken
from console.core.parsers import BoundedJSONParser


def django_errors(exc: DjangoValidationError) -> dict[str, Any] | list[str]:
    """A Django ValidationError as DRF error detail: {field: [messages]} or [messages]."""
    if hasattr(exc, "error_dict"):
        return {
            ("non_field_errors" if field == "__all__" else field): messages
            for field, messages in exc.message_dict.items()
        }
    return {"non_field_errors": exc.messages}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus clear 400/409 answers for errors raised below the serializer."""
    if isinstance(exc, Refused):
        body: dict[str, Any] = {exc.field: [exc.message]} if exc.field else {"detail": exc.message}
        return Response(body, status=exc.status)
    if isinstance(exc, DjangoValidationError):
        return Response(django_errors(exc), status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, ProtectedError | RestrictedError):
        names = (
            sorted(str(obj) for obj in exc.protected_objects)
            if isinstance(exc, ProtectedError)
            else sorted(str(obj) for obj in exc.restricted_objects)
        )
        return Response(
            {"detail": f"This is still used by: {', '.join(names)}."},
            status=status.HTTP_409_CONFLICT,
        )
    if isinstance(exc, IntegrityError):
        return Response(
            {"detail": "This conflicts with an existing object."}, status=status.HTTP_409_CONFLICT
        )
    return drf_exception_handler(exc, context)


class HavenModelSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    """Runs the model's own ``full_clean`` so the model is the one source of validation."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        model: type[models.Model] = self.Meta.model
        instance = copy.copy(self.instance) if self.instance is not None else model()
        m2m = {f.name for f in model._meta.many_to_many}
        for key, value in attrs.items():
            if key not in m2m:
                setattr(instance, key, value)
        exclude = [f.name for f in model._meta.get_fields() if f.name in m2m or f.auto_created]
        try:
            instance.full_clean(exclude=exclude)
        except DjangoValidationError as exc:
            raise ValidationError(django_errors(exc)) from exc
        return attrs


class HavenViewSet(viewsets.ModelViewSet):  # type: ignore[type-arg]
    """Every write goes through ``console.core.services`` (atomic, recorded in the event log).

    ``filterset_class`` names the query parameters the list accepts (the page's list uses the
    same class); ``operator_actions`` names the extra actions an operator may call.
    """

    filterset_class: type[FilterSet] | None = None
    operator_actions: tuple[str, ...] = ()

    def checked(self, serializer_class: type[serializers.Serializer], data: Any = None) -> Any:  # type: ignore[type-arg]
        """An action's body (the request's, or ``data``) checked by ``serializer_class``: its
        validated data, or a 400 naming each field that does not fit."""
        body = serializer_class(data=self.request.data if data is None else data)
        body.is_valid(raise_exception=True)
        return body.validated_data

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:  # type: ignore[type-arg]
        with transaction.atomic():
            services.save_serializer(serializer, actor=self.request.user, verb="create")

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:  # type: ignore[type-arg]
        with transaction.atomic():
            services.save_serializer(serializer, actor=self.request.user, verb="update")

    def perform_destroy(self, instance: models.Model) -> None:
        with transaction.atomic():
            services.delete_object(instance, actor=self.request.user)


class ReadOnlyViewSet(viewsets.ReadOnlyModelViewSet):  # type: ignore[type-arg]
    filterset_class: type[FilterSet] | None = None
    operator_actions: tuple[str, ...] = ()


class TokenRequestSerializer(serializers.Serializer):  # type: ignore[type-arg]
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(
        max_length=4096, trim_whitespace=False, write_only=True, style={"input_type": "password"}
    )


class TokenResponseSerializer(serializers.Serializer):  # type: ignore[type-arg]
    token = serializers.CharField(help_text="Shown once: the console keeps only its SHA-256.")


class LockedOutError(APIException):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_code = "locked_out"


class TokenView(APIView):
    """POST user name and password, get a new API token (for scripts and the CLI).

    Throttled per address; refused while the user or the address is locked out after too many
    failures (console/core/auth.py). Each call makes a new token, shown only in this answer.
    """

    permission_classes = ()
    authentication_classes = ()
    throttle_classes = (auth.LoginRateThrottle,)
    parser_classes = (BoundedJSONParser, FormParser, MultiPartParser)

    @extend_schema(
        request=TokenRequestSerializer, responses={200: TokenResponseSerializer}, auth=[]
    )
    def post(self, request: Request) -> Response:
        body = TokenRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        username = body.validated_data["username"]
        try:
            auth.refuse_locked(request, username, "api")
        except auth.LockedOut as exc:
            raise LockedOutError(str(exc)) from exc
        user = authenticate(
            request=request, username=username, password=body.validated_data["password"]
        )
        if user is None:
            raise ValidationError(
                {"non_field_errors": ["Unable to log in with provided credentials."]},
                code="authorization",
            )
        _, key = ApiToken.issue(user)
        auth.login_succeeded(user, request, "api")
        return Response({"token": key})
