"""Diagnostics: collectors that describe a machine, and rules that explain what is wrong.

The modules are split so the pure parts can be imported anywhere (the relay may
read, re-evaluate and compare reports) without pulling in psutil:

* :mod:`.schema`   - the versioned report format (sections, findings) and its field catalogue
* :mod:`.rules`    - the knowledge base loader and the data-only condition language
* :mod:`.config`   - the agent's ``[diagnostics]`` / ``[thresholds]`` settings
* :mod:`.compare`  - differences between two reports of one machine
* :mod:`.engine`   - runs collectors concurrently and streams sections (needs psutil)
* :mod:`.health`   - the cheap scheduled check behind the control socket's ``health`` alerts

See docs/diagnostics.md.
"""
