"""Delivering queued emails: claim a chunk, send it through the provider in send slots, journal and record each outcome, retry what is transient, sweep what a dead worker left."""
