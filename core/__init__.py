"""What every app builds on: errors, addresses, SQL, Redis, logging, metrics registry, API plumbing."""
