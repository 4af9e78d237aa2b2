"""Management reports (issue 14, docs/reports.md): incidents and their numbers, computed
from the audit trail alone, each number with the sessions and events that make it up."""
