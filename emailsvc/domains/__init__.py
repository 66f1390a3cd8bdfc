"""Sending domains: SES identities with Easy DKIM and a custom MAIL FROM, the DNS
records to publish, SES's status beside what public DNS answers, and the rule
that a From address's domain must be verified (docs/domains.md)."""
