"""The operator console: pages beside the admin, their selectors and template tags, and the probes /readyz, /metrics and the pages share."""
