"""The generic views every page is declared on (NetBox's ObjectListView, ObjectEditView and
ObjectDeleteView): an app's view is a class naming its model, form, template and services-layer
call. The role check, form errors, refusals, messages and redirects are written here once.

- ``RoleView``: ``role_required`` around the view (GET/HEAD need ``read``, other verbs
  ``write``); ``base_context`` is what every template of the view gets (e.g. its cluster).
- ``ObjectListView``: a queryset narrowed by its filterset (console/core/filtersets.py, the one
  the API list uses too) and cut into pages.
- ``FormPageView``: a form that calls the services layer (``perform``); a ``Refused`` is shown
  on the form, success is a message and a redirect.
- ``ObjectEditView``: ``FormPageView`` for creating (no primary key in the URL) or updating a
  model object, optionally with a dry run (the moves a save would cause, nothing saved).
- ``ObjectDeleteView``: the confirmation page, then the services layer's delete; a refusal is
  shown on the page (409).
- ``ActionView``: a button (a POST) that calls the services layer and says what it did.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django import forms
from django.contrib import messages
from django.core.paginator import Paginator
from django.db import models
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import URLPattern, path
from django.views import View
from django.views.decorators.debug import sensitive_post_parameters

from console.core import services
from console.core.errors import Refused
from console.core.filtersets import PAGE, FilterSet
from console.core.views import role_required


class RoleView(View):
    """A view behind ``role_required(write, read)``; ``sensitive`` hides the POST parameters
    from error reports (root passwords, secrets)."""

    read: ClassVar[str] = "read"
    write: ClassVar[str] = "admin"
    sensitive: ClassVar[bool] = False

    @classmethod
    def as_view(cls, **initkwargs: Any) -> Any:
        view = role_required(write=cls.write, read=cls.read)(
            super().as_view(**initkwargs)  # type: ignore[arg-type]
        )
        return sensitive_post_parameters()(view) if cls.sensitive else view

    def setup(self, request: HttpRequest, *args: Any, **kwargs: Any) -> None:
        super().setup(request, *args, **kwargs)
        self.load()

    def load(self) -> None:
        """Read what the URL names (404 when it is not there), before any handler runs."""

    def base_context(self) -> dict[str, Any]:
        return {}

    def show(self, template: str, context: dict[str, Any], status: int = 200) -> HttpResponse:
        return render(self.request, template, {**self.base_context(), **context}, status=status)


class ObjectListView(RoleView):
    """``get_queryset`` narrowed by ``filterset`` (the page's parameters; a value that does not
    fit is ignored, or shown where the template names ``filter_errors``), ``paginate_by`` a page.

    The template gets the rows (or their page, also as ``page``) as ``context_object_name``,
    and ``extra_context()``.
    """

    template_name: ClassVar[str]
    #: the template of an htmx request (a fragment that replaces the rows)
    htmx_template_name: ClassVar[str | None] = None
    filterset: ClassVar[type[FilterSet] | None] = None
    paginate_by: ClassVar[int | None] = None
    context_object_name: ClassVar[str] = "objects"
    #: the list's heading and its New button (a URL name and the button's words), for the
    #: list templates that extend a generic one
    heading: ClassVar[str] = ""
    add: ClassVar[tuple[str, str]] = ("", "")

    def get_queryset(self) -> Any:
        raise NotImplementedError

    def paginated(self, rows: Any) -> Any:
        """What the pages are cut from (the filtered rows, or what is built from them)."""
        return rows

    def extra_context(self) -> dict[str, Any]:
        return {}

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        rows = self.get_queryset()
        if self.filterset is not None:
            self.filters = self.filterset(request.GET, rows, surface=PAGE)
            rows = self.filters.qs
        context: dict[str, Any] = {}
        if self.paginate_by:
            rows = context["page"] = Paginator(self.paginated(rows), self.paginate_by).get_page(
                request.GET.get("page")
            )
        context[self.context_object_name] = rows
        template = self.template_name
        if self.htmx_template_name and getattr(request, "htmx", False):
            template = self.htmx_template_name
        if self.heading:
            context.update(heading=self.heading, add_url=self.add[0], add_label=self.add[1])
        return self.show(template, {**context, **self.extra_context()})


class FormPageView(RoleView):
    """A form whose valid input goes to the services layer (``perform``, which returns the
    success message); a ``Refused`` is the form's error, on ``error_field``."""

    read = "admin"
    form_class: ClassVar[type[forms.BaseForm]]
    template_name: ClassVar[str] = "generic/form_page.html"
    #: the status of the page that shows a posted form again, with its errors
    invalid_status: ClassVar[int] = 200

    def form_kwargs(self) -> dict[str, Any]:
        return {}

    def get_form(self, data: Any = None, files: Any = None) -> Any:
        return self.form_class(data, files, **self.form_kwargs())

    def perform(self, form: Any) -> str:
        raise NotImplementedError

    def success_url(self) -> str:
        raise NotImplementedError

    def error_field(self, form: Any, exc: Refused) -> str | None:
        return exc.field if exc.field in form.fields else None

    def context(self, form: Any) -> dict[str, Any]:
        """What the template shows besides ``form``."""
        return {}

    def render_form(self, form: Any, status: int = 200, **extra: Any) -> HttpResponse:
        return self.show(self.template_name, {"form": form, **self.context(form), **extra}, status)

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return self.render_form(self.get_form())

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        form = self.get_form(request.POST, request.FILES)
        if form.is_valid():
            try:
                message = self.perform(form)
            except Refused as exc:
                form.add_error(self.error_field(form, exc), exc.message)
            else:
                messages.success(request, message)
                return redirect(self.success_url())
        return self.form_invalid(form)

    def form_invalid(self, form: Any) -> HttpResponse:
        return self.render_form(form, self.invalid_status)


class ObjectEditView(FormPageView):
    """Create (no ``pk_kwarg`` in the URL) or update ``model``'s object through the services
    layer. With ``dry_run``, a POST with ``dry_run`` shows ``preview(form)`` and saves nothing."""

    model: ClassVar[type[models.Model]]
    pk_kwarg: ClassVar[str] = "pk"
    #: what the object is called in titles and messages ("failover domain")
    what: ClassVar[str] = ""
    dry_run: ClassVar[bool] = False
    object: Any

    def get_queryset(self) -> Any:
        return self.model._default_manager.all()

    def load(self) -> None:
        pk = self.kwargs.get(self.pk_kwarg)
        self.object = get_object_or_404(self.get_queryset(), pk=pk) if pk else None

    @property
    def verb(self) -> str:
        return "update" if self.object else "create"

    def form_kwargs(self) -> dict[str, Any]:
        return {"instance": self.object}

    def save(self, form: Any) -> Any:
        return services.save_serializer(form, actor=self.request.user, verb=self.verb)

    def saved_message(self, saved: Any) -> str:
        return f"{self.what[:1].upper()}{self.what[1:]} {saved.name} saved."

    def perform(self, form: Any) -> str:
        return self.saved_message(self.save(form))

    def title(self) -> str:
        return f"Edit {self.what} {self.object.name}" if self.object else f"New {self.what}"

    def preview(self, form: Any) -> Any:
        raise NotImplementedError

    def render_form(self, form: Any, status: int = 200, **extra: Any) -> HttpResponse:
        if self.dry_run:
            extra.setdefault("preview", None)
        return super().render_form(form, status, title=self.title(), **extra)

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if self.dry_run and "dry_run" in request.POST:
            form = self.get_form(request.POST, request.FILES)
            if form.is_valid():  # show the moves it would cause; save nothing
                return self.render_form(form, preview=self.preview(form))
            return self.form_invalid(form)
        return super().post(request, *args, **kwargs)


class ObjectDeleteView(RoleView):
    """The confirmation page (``generic/confirm_delete.html``); a POST deletes through
    ``delete`` (the services layer's generic delete unless overridden). A refusal is shown on
    the page with status 409."""

    read = "admin"
    model: ClassVar[type[models.Model]]
    pk_kwarg: ClassVar[str] = "pk"
    what: ClassVar[str] = ""
    template_name: ClassVar[str] = "generic/confirm_delete.html"
    object: Any

    def get_queryset(self) -> Any:
        return self.model._default_manager.all()

    def load(self) -> None:
        self.object = get_object_or_404(self.get_queryset(), pk=self.kwargs[self.pk_kwarg])

    def delete(self) -> None:
        services.delete_object(self.object, actor=self.request.user)

    def deleted_message(self) -> str:
        return f"{self.what[:1].upper()}{self.what[1:]} {self.object.name} deleted."

    def success_url(self) -> str:
        raise NotImplementedError

    def cancel_url(self) -> str:
        return self.success_url()

    def consequence(self) -> str:
        return ""

    def confirm(self, error: str = "") -> HttpResponse:
        context = {
            "object": self.object.name,
            "what": self.what,
            "error": error,
            "consequence": self.consequence(),
            "cancel": self.cancel_url(),
        }
        return self.show(self.template_name, context, status=409 if error else 200)

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return self.confirm()

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            self.delete()
        except Refused as exc:
            return self.confirm(exc.message)
        messages.success(request, self.deleted_message())
        return redirect(self.success_url())


class ActionView(RoleView):
    """A button: a POST calls the services layer (``perform``: the success message, or an
    answer of its own) and goes to ``done_url``; a ``Refused`` is an error message and goes
    back. A GET goes back to ``back_url`` (the page the button is on)."""

    write = "operate"

    def back_url(self) -> str:
        raise NotImplementedError

    def done_url(self) -> str:
        return self.back_url()

    def perform(self) -> str | HttpResponseBase:
        raise NotImplementedError

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        return redirect(self.back_url())

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            done = self.perform()
        except Refused as exc:
            messages.error(request, exc.message)
            return redirect(self.back_url())
        if isinstance(done, HttpResponseBase):
            return done
        if done:
            messages.success(request, done)
        return redirect(self.done_url())


def edit_urls(
    prefix: str,
    name: str,
    edit: type[RoleView],
    delete: type[RoleView],
    pk: str = "pk",
) -> list[URLPattern]:
    """``new/``, ``<pk>/`` (edit) and ``<pk>/delete/`` below ``prefix``, named ``NAME-new``,
    ``NAME-edit`` and ``NAME-delete`` (NetBox's per-model URLs)."""
    edit_view = edit.as_view()
    return [
        path(f"{prefix}new/", edit_view, name=f"{name}-new"),
        path(f"{prefix}<int:{pk}>/", edit_view, name=f"{name}-edit"),
        path(f"{prefix}<int:{pk}>/delete/", delete.as_view(), name=f"{name}-delete"),
    ]
