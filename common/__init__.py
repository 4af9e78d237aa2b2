"""Code that both the agent and the relay import: wire protocol, keys, tokens.

The agent never imports the relay; anything both sides need lives here.
"""

__version__ = "0.2.0"
