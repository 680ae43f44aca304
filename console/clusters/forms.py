"""Forms of the clusters app: the create-cluster wizard, host rows, and fence devices.

Fence-device forms are built from the fence agent's own metadata (``fence_metadata``), so
every agent gets its real parameters, with their descriptions as help text.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from agent import names
from console.clusters.models import Cluster, FenceDevice, Host
from console.core import validators

PASSWORD_MODES = [
    ("same", "One root password for all hosts"),
    ("each", "A root password per host"),
]


class ClusterCreateForm(forms.Form):
    name = forms.CharField(
        label="Cluster name",
        max_length=15,
        validators=[validators.validate_cluster_name],
        help_text="Up to 15 letters, digits, '-' or '_'. It becomes part of every GFS2 lock "
        "table, so it cannot change later.",
    )
    shared_storage = forms.BooleanField(
        label="Enable shared storage (clustered LVM and GFS2)",
        required=False,
        help_text="Installs the storage tools on every host, so the Storage tab can build "
        "clustered volume groups and GFS2 file systems.",
    )
    password_mode = forms.ChoiceField(
        label="Root passwords", choices=PASSWORD_MODES, initial="same", widget=forms.RadioSelect
    )
    password = forms.CharField(
        label="Root password (all hosts)",
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "off"}),
        help_text="Used once, in memory, to install the agent over SSH. Never stored or logged.",
    )
    confirm = forms.BooleanField(
        label="I checked these host key fingerprints against the hosts' own",
        required=False,
    )

    def clean_name(self) -> str:
        name: str = self.cleaned_data["name"]
        if Cluster.objects.filter(name=name).exists():
            raise ValidationError(f"A cluster named {name} already exists: choose another name.")
        return name


class HostsAddForm(ClusterCreateForm):
    """The wizard's password and confirmation fields, for hosts joining an existing cluster."""

    member = forms.ChoiceField(label="Existing host to read the corosync key from", required=False)
    member_password = forms.CharField(
        label="Root password of that existing host",
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "off"}),
        help_text="This cluster has shared storage: the new hosts need its corosync key, which "
        "Haven never keeps. It is read over SSH with this password (used once, never stored "
        "or logged) and written to the new hosts.",
    )

    def __init__(self, *args: Any, cluster: Cluster | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.fields["name"], self.fields["shared_storage"]
        from console.operations.membership import shared_storage

        if cluster is None or not shared_storage(cluster):
            del self.fields["member"], self.fields["member_password"]
        else:
            names_ = list(cluster.hosts.order_by("name").values_list("name", flat=True))
            self.fields["member"].choices = [(n, n) for n in names_]  # type: ignore[attr-defined]


def _host_field(label: str, validator: Any, placeholder: str) -> forms.CharField:
    """A row's optional host name or address (up to 253 characters, DNS's limit)."""
    widget = forms.TextInput(attrs={"placeholder": placeholder})
    return forms.CharField(
        label=label, max_length=253, required=False, validators=[validator], widget=widget
    )


class HostRowForm(forms.Form):
    name = _host_field("Host name", validators.validate_hostname, "et-virt05")
    address = _host_field("Address", validators.validate_address, "10.88.0.5 (default: the name)")
    port = forms.IntegerField(label="SSH port", min_value=1, max_value=65535, initial=22)
    password = forms.CharField(
        label="Root password",
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "off"}),
    )
    fingerprint = forms.CharField(required=False, widget=forms.HiddenInput)

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        name = data.get("name")
        if name and not data.get("address"):
            data["address"] = name
        if name and Host.objects.filter(name=name).exists():
            self.add_error("name", f"{name} is already a host of a cluster.")
        return data


class BaseHostRows(forms.BaseFormSet):  # type: ignore[type-arg]
    default_error_messages = {
        "missing_management_form": "The list of host rows came back damaged (its row count "
        "is missing or not a number): reload the page and enter the hosts again.",
    }

    def clean(self) -> None:
        if any(self.errors) or not self.management_form.is_valid():
            return
        names = [f.cleaned_data.get("name") for f in self.forms if f.cleaned_data.get("name")]
        if not names:
            raise ValidationError("Give at least one host.")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValidationError(f"Each host can be listed once: {', '.join(dupes)} twice.")

    def rows(self) -> list[dict[str, Any]]:
        return [f.cleaned_data for f in self.forms if f.cleaned_data.get("name")]


HostRowFormSet = forms.formset_factory(
    HostRowForm,
    formset=BaseHostRows,
    extra=0,
    min_num=1,
    max_num=64,
    absolute_max=64,
    validate_max=True,
)

# Parameters the form does not ask for: the action is Haven's choice; plug/port has its own
# field; the rest only change how the agent prints or logs.
SKIPPED_PARAMETERS = frozenset(
    {"action", "plug", "port", "help", "version", "verbose", "debug", "separator", "verbose_level"}
)


class FenceDeviceForm(forms.ModelForm):  # type: ignore[type-arg]
    """Name, host, plug and order, plus one field per parameter of the agent's metadata."""

    class Meta:
        model = FenceDevice
        fields = ["name", "host", "plug", "order"]
        help_texts = {
            "plug": "The plug, port or VM name this device powers for the host (if the agent "
            "needs one).",
            "order": "Devices of a host are tried in this order (1 first).",
        }

    def __init__(
        self,
        *args: Any,
        cluster: Cluster,
        agent: str,
        parameters: list[dict[str, Any]],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.cluster, self.agent = cluster, agent
        self.fields["host"].queryset = Host.objects.filter(cluster=cluster)  # type: ignore[attr-defined]
        self.fields["host"].help_text = "The host this device powers off."
        self.param_names: list[str] = []
        self.secret_names: set[str] = set()
        current = dict(self.instance.parameters) if self.instance.pk else {}
        stored_secrets = self.instance.secret_parameters if self.instance.pk else {}
        for p in parameters:
            name = str(p.get("name", ""))
            if name in ("plug", "port") and p.get("required"):
                self.fields["plug"].required = True  # this agent needs to know which outlet
                if p.get("description"):
                    self.fields["plug"].help_text = str(p["description"])
            if not name or name in SKIPPED_PARAMETERS or p.get("deprecated"):
                continue
            try:
                names.fence_parameter(name)
            except names.InvalidName:
                continue  # not a name the agent would pass on: never asked for
            secret = bool(p.get("secret")) or names.is_secret(name)
            field = self._field_for(p, secret, has_stored=name in stored_secrets)
            if name in current:
                field.initial = current[name]
            self.fields[f"p_{name}"] = field
            self.param_names.append(name)
            if secret:
                self.secret_names.add(name)

    @staticmethod
    def _field_for(p: dict[str, Any], secret: bool, has_stored: bool) -> forms.Field:
        label = str(p["name"])
        help_text = str(p.get("description") or "")
        default = p.get("default")
        required = bool(p.get("required")) and default in (None, "") and not has_stored
        kind = str(p.get("type") or "string")
        if secret:
            if has_stored:
                help_text += " (Stored encrypted; leave empty to keep it.)"
            return forms.CharField(
                label=label,
                required=required,
                strip=False,
                help_text=help_text,
                widget=forms.PasswordInput(attrs={"autocomplete": "off"}),
            )
        if kind == "boolean":
            return forms.BooleanField(
                label=label,
                required=False,
                help_text=help_text,
                initial=str(default).lower() in ("1", "true", "on", "yes"),
            )
        choices = p.get("choices") or []
        if choices:
            options = [("", "(default)")] + [(str(c), str(c)) for c in choices]
            return forms.ChoiceField(
                label=label, required=required, choices=options, help_text=help_text
            )
        placeholder = {"placeholder": f"default: {default}"} if default not in (None, "") else {}
        return forms.CharField(
            label=label,
            required=required,
            help_text=help_text,
            max_length=512,
            widget=forms.TextInput(attrs=placeholder),
        )

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        for name in self.param_names:
            value = data.get(f"p_{name}")
            if isinstance(value, str) and (problem := validators.fence_value_error(name, value)):
                self.add_error(f"p_{name}", problem)
        return data

    def _post_clean(self) -> None:
        self.instance.cluster = self.cluster
        self.instance.agent = self.agent
        params: dict[str, Any] = {}
        for name in self.param_names:
            if name in self.secret_names:
                continue
            value = self.cleaned_data.get(f"p_{name}")
            if value in (None, "", False):
                continue
            params[name] = "1" if value is True else value
        self.instance.parameters = params
        super()._post_clean()  # type: ignore[misc]

    def save(self, commit: bool = True) -> FenceDevice:
        device: FenceDevice = super().save(commit=False)
        secrets = dict(device.secret_parameters) if device.pk else {}
        for name in self.secret_names:
            value = self.cleaned_data.get(f"p_{name}")
            if value:
                secrets[name] = value
        device.secret_parameters = secrets
        if commit:
            device.save()
        return device


class FenceAgentForm(forms.Form):
    agent = forms.CharField(
        label="Fence agent",
        max_length=64,
        validators=[validators.validate_fence_agent],
        help_text="The fence_* program that powers the host off, e.g. fence_ipmilan for a BMC.",
        widget=forms.TextInput(attrs={"list": "fence-agents", "placeholder": "fence_ipmilan"}),
    )


class ClusterPolicyForm(forms.ModelForm):  # type: ignore[type-arg]
    """The cluster's placement policy: vCPU overcommit, admission control, the rebalancer."""

    class Meta:
        model = Cluster
        fields = ["cpu_overcommit", "host_failures_to_tolerate", "rebalance"]
        labels = {
            "cpu_overcommit": "vCPU overcommit (vCPUs per CPU)",
            "host_failures_to_tolerate": "Host failures to tolerate (admission control)",
            "rebalance": "Live rebalancer",
        }


class HostSettingsForm(forms.ModelForm):  # type: ignore[type-arg]
    """A host's own settings on its page: the same field and rules as ``PATCH
    /api/hosts/{id}/`` (the model's validators, run by both), saved through the same services
    layer."""

    class Meta:
        model = Host
        fields = ["cpu_overcommit"]
        labels = {"cpu_overcommit": "vCPU overcommit (vCPUs per CPU)"}
