from django.apps import AppConfig


class EmailsvcConfig(AppConfig):
    name = "emailsvc"
    verbose_name = "Sending"

    def ready(self) -> None:
        from celery.signals import worker_process_shutdown

        worker_process_shutdown.connect(_pool_process_exit, weak=False, dispatch_uid="emailsvc.pool_process_exit")


def _pool_process_exit(pid=None, **kwargs) -> None:
    """A pool process exits: the chunk its recorder holds is recorded first (else
    the sweeper records it from the journal); its live gauges leave /metrics
    (core.metrics, multiprocess mode)."""
    from core.metrics import process_dead
    from emailsvc.delivery.recording import recordings_stop

    recordings_stop(timeout=30)
    process_dead(pid=pid)
