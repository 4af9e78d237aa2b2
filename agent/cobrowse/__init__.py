"""Co-browse on the agent: a Chromium-family browser with a fresh profile, driven over
the DevTools protocol, recording with rrweb at the source (masked before anything
leaves the machine). Nothing here is imported until a ``cobrowse`` channel opens.

* :mod:`.cdp` — the protocol core, without I/O (frames in, events out);
* :mod:`.browser` — finding and launching the browser, the asyncio pipe transport;
* :mod:`.recorder` — rrweb injected in every page, frame and popup; privacy options;
* :mod:`.events` — what the page sends is untrusted: validated, capped, batched;
* :mod:`.control` — technician input through ``Input.*``, only while granted.
"""
