from django.apps import AppConfig


class TrackingConfig(AppConfig):
    name = "tracking"
    verbose_name = "Tracking"

    def ready(self) -> None:
        from emailsvc.status import changes_committed
        from tracking.queueing import status_changes_wake

        # A committed status change with a subscriber wakes the webhook dispatcher.
        changes_committed.connect(status_changes_wake, dispatch_uid="tracking.status_changes_wake")
