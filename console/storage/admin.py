from django.contrib import admin

from console.storage.models import BlockDevice, Filesystem, LogicalVolume, VolumeGroup

admin.site.register(BlockDevice)
admin.site.register(VolumeGroup)
admin.site.register(LogicalVolume)
admin.site.register(Filesystem)
