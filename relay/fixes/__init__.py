"""The relay's side of approved fixes (issue 12, docs/fixes-relay.md).

* :mod:`.store`: the catalogue (immutable versions, signatures, revocations), run
  records and bulk runs, in the relay's database (migration 0007);
* :mod:`.signing`: the relay's online fix-approval key (``fix_key`` in the data dir);
* :mod:`.service`: submit, approve (four eyes), add an offline signature, revoke:
  each step checked and audited with the manifest's digest (``relay.fixes``);
* :mod:`.trust`: ``GET /agent/fix-trust``, the fix keys signed by the audit key;
* :mod:`.push`: the signed revocation list sent to agents that can take it;
* :mod:`.bulk`: one approved fix over a group's online agents.

The fix channel itself is a capability room (``relay/capabilities/fix.py``); what it
needs of this package it takes through :class:`.service.FixService`, which the relay
holds as ``relay.fixes``. The manifest format, its canonical bytes, signatures and
revocation lists are the contract both sides read (``backline.common.fixes``).
"""
