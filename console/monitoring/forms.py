from __future__ import annotations

from typing import Any

from django import forms

from console.monitoring import services
from console.monitoring.choices import Topic
from console.monitoring.models import AlertHook


class AlertHookForm(forms.ModelForm):  # type: ignore[type-arg]
    topics = forms.MultipleChoiceField(
        choices=[c for c in Topic.choices if c[0] != Topic.TEST],
        widget=forms.CheckboxSelectMultiple,
    )
    signing_key = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Webhook only: signs each body (X-Haven-Signature). Empty keeps the current key.",
    )

    class Meta:
        model = AlertHook
        fields = ["name", "kind", "url", "email_to", "topics", "cluster", "enabled"]

    def save(self, commit: bool = True) -> Any:
        hook: AlertHook = super().save(commit=False)
        if self.cleaned_data.get("signing_key"):
            services.set_signing_key(hook, self.cleaned_data["signing_key"])
        if commit:
            hook.save()
        return hook
