"""The diagnostics contracts both sides read: the report schema the agent writes and
the relay keeps, and the request the relay sends and the agent re-validates. The
engine that fills a report stays in ``backline.agent.diagnostics``; the relay never
imports the agent."""
