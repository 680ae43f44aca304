from django.apps import AppConfig

from console.core import colours


class JobsConfig(AppConfig):
    name = "console.jobs"
    label = "jobs"

    def ready(self) -> None:
        from console.jobs.models import JOB_STATUS_COLOURS, STEP_COLOURS

        colours.register("job", JOB_STATUS_COLOURS)
        colours.register("step", STEP_COLOURS)
