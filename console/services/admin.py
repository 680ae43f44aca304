from django.contrib import admin

from console.core.admin import ReadOnlyAdmin, ReadOnlyInline
from console.services.models import FailoverDomain, FailoverDomainMember, VmService

admin.site.register(FailoverDomainMember, ReadOnlyAdmin)


class MemberInline(ReadOnlyInline):
    model = FailoverDomainMember


@admin.register(FailoverDomain)
class FailoverDomainAdmin(ReadOnlyAdmin):
    list_display = ["name", "cluster", "ordered", "restricted", "nofailback"]
    inlines = [MemberInline]


@admin.register(VmService)
class VmServiceAdmin(ReadOnlyAdmin):
    list_display = ["name", "cluster", "desired_state", "state", "host", "priority"]
    list_filter = ["cluster", "state", "desired_state"]
