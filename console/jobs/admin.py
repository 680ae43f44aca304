from django.contrib import admin

from console.core.admin import ReadOnlyAdmin
from console.jobs.models import Job, JobEvent, JobStep

admin.site.register(Job, ReadOnlyAdmin)
admin.site.register(JobStep, ReadOnlyAdmin)
admin.site.register(JobEvent, ReadOnlyAdmin)
