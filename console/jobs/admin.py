from django.contrib import admin

from console.jobs.models import Job, JobEvent, JobStep

admin.site.register(Job)
admin.site.register(JobStep)
admin.site.register(JobEvent)
