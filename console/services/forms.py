"""Forms for failover domains (with their members) and VM services."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db import models

from console.clusters.models import Cluster, Host
from console.services.domainxml import parse_domain_xml
from console.services.models import HEALTH_FIELDS, POLICY_FIELDS, FailoverDomain, VmService

DOMAIN_HELP = {
    "ordered": "Prefer members with the best priority (1 is best): a guest runs on the "
    "best-priority member that is up.",
    "restricted": "Run only on members: when none is up, the guest waits instead of running "
    "elsewhere.",
    "nofailback": "When a better member comes back, leave running guests where they are "
    "(no move back). Failback always live-migrates, never restarts the guest.",
}


class FailoverDomainForm(forms.ModelForm):  # type: ignore[type-arg]
    """The domain's flags, and one member checkbox + priority per host of the cluster."""

    class Meta:
        model = FailoverDomain
        fields = ["name", "ordered", "restricted", "nofailback"]
        help_texts = DOMAIN_HELP
        labels = {"nofailback": "No failback"}

    def __init__(self, *args: Any, cluster: Cluster, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cluster = cluster
        self.instance.cluster = cluster
        self.hosts = list(Host.objects.filter(cluster=cluster).order_by("name"))
        current = (
            {m.host_id: m.priority for m in self.instance.members.all()} if self.instance.pk else {}
        )
        for host in self.hosts:
            self.fields[f"member_{host.pk}"] = forms.BooleanField(
                label=host.name, required=False, initial=host.pk in current
            )
            self.fields[f"priority_{host.pk}"] = forms.IntegerField(
                label=f"Priority of {host.name}",
                min_value=1,
                max_value=100,
                required=False,
                initial=current.get(host.pk, 1),
                widget=forms.NumberInput(attrs={"class": "priority"}),
            )

    def member_rows(self) -> list[tuple[Host, forms.BoundField, forms.BoundField]]:
        return [(h, self[f"member_{h.pk}"], self[f"priority_{h.pk}"]) for h in self.hosts]

    def flag_fields(self) -> list[forms.BoundField]:
        return [self[n] for n in ("ordered", "restricted", "nofailback")]

    def members(self) -> list[dict[str, Any]]:
        return [
            {"host": h, "priority": self.cleaned_data.get(f"priority_{h.pk}") or 1}
            for h in self.hosts
            if self.cleaned_data.get(f"member_{h.pk}")
        ]

    def clean_name(self) -> str:
        name: str = self.cleaned_data["name"]
        others = FailoverDomain.objects.filter(cluster=self.cluster, name=name)
        if self.instance.pk:
            others = others.exclude(pk=self.instance.pk)
        if others.exists():
            raise ValidationError(f"This cluster already has a failover domain named {name}.")
        return name

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        chosen = [h for h in self.hosts if data.get(f"member_{h.pk}")]
        if data.get("restricted") and not chosen:
            raise ValidationError(
                "A restricted domain needs at least one member, or its guests could run nowhere."
            )
        return data


SERVICE_HELP = {
    "recovery": "What happens when the guest stops without being asked to: restart it where "
    "it was, start it on another host, or leave it stopped.",
    "max_restarts": "Restarts allowed within the restart window before the guest is relocated "
    "instead (0 = no limit).",
    "restart_window_s": "The restart limit counts restarts in this many seconds (0 = forever).",
    "max_relocations": "How many hosts in a row may fail it before it is marked failed.",
    "priority": "0-1000, higher is more important: started first after a host failure, and "
    "may stop less important guests when memory is short.",
    "failover_domain": "Where the guest may run and which hosts it prefers; none = any host.",
    "migratable": "Move it by live migration (no restart) for migrate, failback and "
    "maintenance. Untick for guests with local disks.",
    "autostart": "Off: the cluster never starts it on its own (not when it is new, not after a "
    "full power cycle of the cluster); only a person does. Failover after a host failure still "
    "applies while the cluster runs.",
    "protected": "Admission control counts it: starting it is refused when the cluster could "
    "not restart it after losing its worst host(s). Untick for guests that may wait (a lab).",
}


#: health and probe settings with a default: optional in the form
DEFAULTED = (
    "health_agent_interval_s",
    "health_agent_misses",
    "probe_interval_s",
    "probe_misses",
)


class VmServiceForm(forms.ModelForm):  # type: ignore[type-arg]
    xml_file = forms.FileField(
        label="…or import a libvirt XML file",
        required=False,
        help_text="A file made by 'virsh dumpxml GUEST'. It replaces the text above.",
    )

    class Meta:
        model = VmService
        fields = [
            "name",
            "domain_xml",
            *POLICY_FIELDS,
            "autostart",
            *HEALTH_FIELDS,
        ]
        help_texts = SERVICE_HELP
        labels = {
            "domain_xml": "Libvirt domain XML",
            "restart_window_s": "Restart window (seconds)",
            "save_on_preempt": "Save (not shut down) when stopped to make room",
            "health_watchdog": "Watchdog fired = crash",
            "health_panic": "Guest panic (pvpanic) = crash",
            "health_agent_interval_s": "Guest agent ping every (seconds, 0 = off)",
            "health_agent_misses": "Guest agent misses before a crash",
            "probe": "Application probe",
            "probe_host": "Probe address",
            "probe_port": "Probe port",
            "probe_path": "Probe path (HTTP)",
            "probe_interval_s": "Probe every (seconds)",
            "probe_misses": "Probe misses before a crash",
        }
        widgets = {"domain_xml": forms.Textarea(attrs={"rows": 12, "spellcheck": "false"})}

    field_order = ["name", "domain_xml", "xml_file", "failover_domain", "recovery"]

    def __init__(self, *args: Any, cluster: Cluster, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cluster = cluster
        self.instance.cluster = cluster
        self.fields["failover_domain"].empty_label = "none (any host)"  # type: ignore[attr-defined]
        self.fields["failover_domain"].queryset = FailoverDomain.objects.filter(  # type: ignore[attr-defined]
            cluster=cluster
        )
        self.fields["domain_xml"].required = False
        self.fields["name"].help_text = (
            "The guest's libvirt name; it must match <name> in the XML (taken from the XML "
            "when left empty)."
        )
        self.fields["name"].required = False
        if self.instance.pk:
            self.fields["name"].disabled = True
            self.fields["name"].help_text = "A service's name cannot change."
        for key in DEFAULTED:  # left empty (or sent by an older page): the field's default
            self.fields[key].required = False

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        for key in DEFAULTED:
            model_field = VmService._meta.get_field(key)
            if key in data and data[key] is None and isinstance(model_field, models.Field):
                data[key] = model_field.get_default()
        upload = data.get("xml_file")
        if upload is not None:
            if upload.size > 256 * 1024:
                self.add_error("xml_file", "This file is larger than 256 KiB: not a domain XML.")
                return data
            try:
                data["domain_xml"] = upload.read().decode("utf-8")
            except UnicodeDecodeError:
                self.add_error("xml_file", "This file is not UTF-8 text.")
                return data
            self.instance.domain_xml = data["domain_xml"]
        xml = data.get("domain_xml") or ""
        if not xml.strip():
            self.add_error("domain_xml", "Paste the guest's libvirt XML, or import a file.")
            return data
        if not data.get("name"):
            try:
                info = parse_domain_xml(xml)
            except ValidationError as exc:
                self.add_error("domain_xml", exc)
                return data
            data["name"] = info.name
            self.instance.name = info.name
        name = data.get("name")
        others = VmService.objects.filter(cluster=self.cluster, name=name)
        if self.instance.pk:
            others = others.exclude(pk=self.instance.pk)
        if name and others.exists():
            self.add_error("name", f"This cluster already has a service named {name}.")
        return data


class ImportGuestForm(forms.Form):
    host = forms.ModelChoiceField(
        queryset=Host.objects.none(),
        help_text="The host where the guests are defined today.",
        empty_label=None,
    )
    domain = forms.ModelChoiceField(
        label="Failover domain",
        queryset=FailoverDomain.objects.none(),
        required=False,
        empty_label="none (any host)",
        help_text=SERVICE_HELP["failover_domain"],
    )

    def __init__(self, *args: Any, cluster: Cluster, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["host"].queryset = Host.objects.filter(cluster=cluster)  # type: ignore[attr-defined]
        self.fields["domain"].queryset = FailoverDomain.objects.filter(cluster=cluster)  # type: ignore[attr-defined]
