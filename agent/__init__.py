"""The Backline agent: runs on the customer's machine and connects out to a relay."""
