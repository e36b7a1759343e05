from django.apps import AppConfig


class DcimConfig(AppConfig):
    name = "netpoint_metrics.sample.dcim"
    label = "dcim"
    verbose_name = "DCIM (sample)"

    def ready(self) -> None:
        from netpoint_metrics.sample.dcim import signals  # noqa: F401
