"""SMTP submission: any application that sends mail over SMTP sends through
emailsvc, with the guarantees of POST /emails (docs/smtp.md)."""
