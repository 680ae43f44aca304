from django.contrib import admin

from console.core.admin import ReadOnlyAdmin
from console.storage.models import BlockDevice, Filesystem, LogicalVolume, VolumeGroup

admin.site.register(BlockDevice, ReadOnlyAdmin)
admin.site.register(VolumeGroup, ReadOnlyAdmin)
admin.site.register(LogicalVolume, ReadOnlyAdmin)
admin.site.register(Filesystem, ReadOnlyAdmin)
