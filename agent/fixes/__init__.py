"""The agent's side of approved fixes (issue 12): what it trusts, what it ran, how.

* :mod:`.executor` runs one fix script the way the contract says (private folder,
  bare environment, its own session, a timeout that kills the whole tree, output
  streamed and cut at a cap, the verify script afterwards);
* :mod:`.trust` gathers the keys this agent trusts: the relay's fix keys pinned at
  enrollment (or from the relay's signed ``GET /agent/fix-trust``) and the offline
  approver keys only the local policy names;
* :mod:`.revocations` keeps the merged revocation list in the state directory;
* :mod:`.cache` keeps the approved fixes this agent has seen, with their signatures,
  for self-service (``backline-agent fix``), re-verified at every use;
* :mod:`.checks` is the one order of checks every run goes through, whoever asked.

Nothing here is imported by an idle agent: the ``fix`` room, the ``fix`` command and
the control socket's ``fix_revocations`` handler import it when they need it.
"""
