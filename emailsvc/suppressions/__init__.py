"""The suppression list: add and lift, CSV import, SES's account-level list."""
