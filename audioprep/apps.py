from django.apps import AppConfig


class AudioPrepConfig(AppConfig):
    name = "audioprep"
    label = "audioprep"
    verbose_name = "Audio preparation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
