"""Background-job metrics for django-rq/RQ, written into the same multiprocess directory.

Two settings lines (``RQ = {"QUEUE_CLASS": ..., "WORKER_CLASS": ...}``) adopt it:

* :class:`MetricsQueue` counts a job each time it is put on a queue, in the process that
  puts it there (a web worker, a management command, a work-horse re-enqueuing a retry),
  and notes the queue's depth right after.
* :class:`MetricsWorker` counts executions in the work-horse RQ forks for each job
  (started, finished or failed, and the duration RQ records), and a failure in the worker
  itself when the work-horse dies (SIGKILL, OOM); it folds dead processes after each job,
  as a server master does after a worker exits, and notes queue depth whenever it takes a
  job.

Why this is exact: every one of these processes, the ``rqworker`` and each work-horse, gets
its own never-reused identifier and lease the first time it writes a value
(:func:`netpoint_metrics.core.identity.current` notices the fork). A SIGKILLed worker or
work-horse leaves its files behind with its lease free, and the next fold (after the next
job, on a web worker's exit, or at a scrape every ``FOLD_EVERY`` seconds) moves its counts
into the archive. What a killed process wrote stays counted; nothing is counted twice.

What counts when a process is killed mid-job (documented, tested):

* the work-horse is killed: ``started`` was counted by the horse; the worker sees the horse
  die and RQ fails the job, which counts ``failed`` (with the duration up to the death);
* the ``rqworker`` is killed but not its work-horse (RQ puts each horse in its own process
  group): the horse finishes the job and counts it ``finished`` or ``failed`` itself;
* both are killed: the job stays "started" in RQ until RQ's own clean-up finds its
  heartbeat expired (at least a minute later) and moves it to the failed registry; that
  calls the worker's exception handlers, and ours counts it ``failed`` then.
"""

from __future__ import annotations

import logging
from typing import Any

import rq.exceptions
from django_rq.queues import DjangoRQ
from rq.worker import Worker

from netpoint_metrics import metrics
from netpoint_metrics.core import identity, lifecycle

log = logging.getLogger(__name__)

#: What RQ's registry clean-up reports for a job whose processes all died (RQ >= 2.x).
_ABANDONED = getattr(rq.exceptions, "AbandonedJobError", None)


def _job_name(job: Any) -> str:
    try:
        return str(job.func_name)
    except Exception:
        return "<unknown>"


def _seconds(job: Any) -> float | None:
    started, ended = getattr(job, "started_at", None), getattr(job, "ended_at", None)
    if started is None or ended is None:
        return None
    return max(0.0, (ended - started).total_seconds())


def observe_depth(queue: Any) -> None:
    try:
        metrics.QUEUE_DEPTH.labels(queue.name).set(queue.count)
    except Exception:
        log.warning("netpoint-metrics: no depth for queue %r", queue.name, exc_info=True)


class MetricsQueue(DjangoRQ):
    """django-rq's queue, counting every job it puts on Redis."""

    def _enqueue_job(self, job: Any, pipeline: Any = None, *args: Any, **kwargs: Any) -> Any:
        job = super()._enqueue_job(job, pipeline, *args, **kwargs)
        try:
            metrics.JOBS_ENQUEUED.labels(self.name, _job_name(job)).inc()
        except Exception:
            log.exception("netpoint-metrics: enqueue counter update failed")
        if pipeline is None:  # inside a caller's pipeline nothing is on Redis yet
            observe_depth(self)
        return job


class JobMetricsMixin:
    """Job counters for an RQ worker class; put it first among the bases."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # First in the chain: a handler that returns False stops the ones after it.
        self._exc_handlers.insert(0, _count_abandoned)

    # -- in the work-horse -------------------------------------------------------------

    def perform_job(self, job: Any, queue: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            metrics.JOBS_STARTED.labels(queue.name, _job_name(job)).inc()
        except Exception:
            log.exception("netpoint-metrics: job counter update failed")
        return super().perform_job(job, queue, *args, **kwargs)

    def handle_job_success(self, job: Any, queue: Any, *args: Any, **kwargs: Any) -> Any:
        result = super().handle_job_success(job, queue, *args, **kwargs)
        _count(metrics.JOBS_FINISHED, queue.name, job)
        return result

    # -- in the work-horse (the job raised) or the worker (the work-horse died) ----------

    def handle_job_failure(self, job: Any, queue: Any, *args: Any, **kwargs: Any) -> Any:
        result = super().handle_job_failure(job, queue, *args, **kwargs)
        _count(metrics.JOBS_FAILED, queue.name, job)
        return result

    # -- in the worker -----------------------------------------------------------------

    def execute_job(self, job: Any, queue: Any) -> Any:
        try:
            return super().execute_job(job, queue)
        finally:
            _fold_dead()

    def dequeue_job_and_maintain_ttl(self, *args: Any, **kwargs: Any) -> Any:
        for queue in self.queues:
            observe_depth(queue)
        result = super().dequeue_job_and_maintain_ttl(*args, **kwargs)
        if result is not None:
            observe_depth(result[1])
        return result


class MetricsWorker(JobMetricsMixin, Worker):
    """RQ's forking worker with job metrics.

    ``RQ = {"WORKER_CLASS": "netpoint_metrics.rq_metrics.MetricsWorker"}``
    """


def _count(counter: Any, queue_name: str, job: Any) -> None:
    try:
        name = _job_name(job)
        counter.labels(queue_name, name).inc()
        seconds = _seconds(job)
        if seconds is not None:
            metrics.JOB_DURATION.labels(queue_name, name).observe(seconds)
    except Exception:
        log.exception("netpoint-metrics: job counter update failed")


def _count_abandoned(job: Any, exc_type: Any, exc_value: Any, traceback: Any) -> bool:
    """Exception handler: RQ's registry clean-up reports a job whose processes all died."""
    if _ABANDONED is not None and exc_type is _ABANDONED:
        try:
            metrics.JOBS_FAILED.labels(job.origin, _job_name(job)).inc()
        except Exception:
            log.exception("netpoint-metrics: job counter update failed")
    return True  # let the next handler run


def _fold_dead() -> None:
    path = identity.multiproc_dir()
    if path and identity.installed() == "multiprocess":
        lifecycle.worker_died(path)
