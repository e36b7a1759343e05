"""Cache invalidation: saving or deleting a model drops its cached API representation."""

from django.core.cache import cache
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from netpoint_metrics.sample.dcim.models import Device, Site


def cache_key(model: str, pk: int) -> str:
    return f"netpoint:{model}:{pk}"


@receiver(post_save, sender=Device)
@receiver(post_delete, sender=Device)
@receiver(post_save, sender=Site)
@receiver(post_delete, sender=Site)
def invalidate(sender, instance, **kwargs) -> None:
    from django.conf import settings

    model = sender._meta.model_name
    if cache.delete(cache_key(model, instance.pk)) and settings.METRICS_ENABLED:
        from netpoint_metrics import metrics

        metrics.CACHE_INVALIDATIONS.labels(model).inc()
