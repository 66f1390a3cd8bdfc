"""The sending side: accept, check and queue emails, deliver them at the account's rate, and keep every email's status."""
