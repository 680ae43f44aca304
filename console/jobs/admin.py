from django.contrib import admin

from console.jobs.models import Job, JobEvent

admin.site.register(Job)
admin.site.register(JobEvent)
