from django.apps import AppConfig


class TrackingConfig(AppConfig):
    name = "tracking"
    verbose_name = "Tracking"

    def ready(self) -> None:
        from emailsvc.providers.testmode import simulated_events
        from emailsvc.status import changes_committed
        from tracking.apply import simulated_events_apply
        from tracking.queueing import status_changes_wake

        # A committed status change with a subscriber wakes the webhook dispatcher.
        changes_committed.connect(status_changes_wake, dispatch_uid="tracking.status_changes_wake")
        # A test key's recorded emails: the mailbox simulator's events are applied as SES's are.
        simulated_events.connect(simulated_events_apply, dispatch_uid="tracking.simulated_events_apply")
