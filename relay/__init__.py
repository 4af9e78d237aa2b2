"""The Backline relay: agents connect out to it, technicians work through it."""
