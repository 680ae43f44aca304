from django.contrib import admin

from console.services.models import FailoverDomain, FailoverDomainMember, VmService

admin.site.register(FailoverDomainMember)


class MemberInline(admin.TabularInline):  # type: ignore[type-arg]
    model = FailoverDomainMember
    extra = 1


@admin.register(FailoverDomain)
class FailoverDomainAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "cluster", "ordered", "restricted", "nofailback"]
    inlines = [MemberInline]


@admin.register(VmService)
class VmServiceAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "cluster", "desired_state", "state", "host", "priority"]
    list_filter = ["cluster", "state", "desired_state"]
