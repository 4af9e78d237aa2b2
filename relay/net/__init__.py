"""The relay's transport engine (filled in below)."""
