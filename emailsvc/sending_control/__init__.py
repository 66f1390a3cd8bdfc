"""What may be sent and when: the breaker (pauses), the account's sending rate, allowlists."""
