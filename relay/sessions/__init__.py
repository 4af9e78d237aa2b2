"""Live sessions: states, the manager, the tunnel, channels and session codes."""
