"""The customer's local policy: per capability, ``allow``, ``ask`` or ``deny``.

The relay's word alone never touches the machine: every SSH channel a technician
opens is checked here first. The file belongs to the customer's administrator::

    [capabilities]
    info = "allow"
    diagnostics = "allow"
    shell = "deny"
    fix = "ask"
    cobrowse = "ask"
    sftp = "deny"

    [ask]
    timeout_s = 60      # how long the customer has to answer; no answer means no
    # command = ["/usr/local/bin/ask-customer"]   # your own consent program (below)

    [shell]
    # account = "support"   # the terminal runs as this account (the agent must run
    #                       # as root); default: the agent's own user

    [fix]                   # approved fixes (docs/fixes-agent.md)
    decision = "ask"        # allow: run approved fixes without asking (unless the fix
    #                       # itself asks for consent); ask: always ask; deny: none
    # offline_keys = ["ssh-ed25519 AAAA... approver@example"]  # approver keys the
    #                       # relay never holds
    # required_offline = 1  # how many of them must have signed a fix (default 0)
    # allowed_ids = ["dns-flush"]   # only these fixes (empty: any approved fix)

    [cobrowse]              # co-browse (docs/cobrowse.md)
    # browser = "/usr/bin/chromium"  # default: the first Chromium, Chrome, Edge or Brave found
    # headless = "auto"     # auto: headless when there is no display; true; false
    # mask_selectors = [".account-number"]   # inputs and text masked, and no technician
    #                       # typing while focus is in them (besides password and cc-* fields)
    # block_selectors = ["#statement"]       # left out of the recording (besides
    #                       # [data-backline-private])
    # private_urls = ["https://bank.example/*"]  # pages not recorded at all (glob)
    # allowed_urls = ["https://*.example.com/*"] # if set, the only pages it may open (glob)
    # screencast = false    # allow the video fallback: pixels cannot be masked

``[fix]`` is set only here, never by the relay: a relay that is compromised holds its
own fix key at most, and an agent whose policy asks for offline signatures refuses
whatever that key alone signed.

``[ask] command``: a program that asks instead of the built-in dialog. It gets the
question as its last argument (and ``BACKLINE_TECHNICIAN``, ``BACKLINE_CAPABILITY``,
``BACKLINE_REASON``, ``BACKLINE_TICKET`` in its environment); exit status 0 or a first
line ``yes`` means yes, anything else no. One that says ``yes`` and keeps running is
the indicator while the channel lives: the agent ends it when the channel ends, and
its exiting first ends the channel (the customer closed it).

Where it is read from: ``--policy``, else ``$BACKLINE_AGENT_POLICY``, else
``policy.toml`` in the agent's state directory, else ``/etc/backline/policy.toml``,
else the defaults above. A capability the file does not name gets its default, and
one with no default (a name this agent has never heard of) is denied. A file that
cannot be read or says something else than allow/ask/deny is an error, never a
silent fallback: a typo must not quietly grant more than the administrator meant.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backline.common.capabilities import CAPABILITY_RE, DEFAULT_DECISIONS

ENV_POLICY = "BACKLINE_AGENT_POLICY"
POLICY_NAME = "policy.toml"
SYSTEM_POLICY = Path("/etc/backline/policy.toml")
DECISIONS = ("allow", "ask", "deny")
#: A capability the file does not name gets its default (common/capabilities.py).
DEFAULTS: dict[str, str] = dict(DEFAULT_DECISIONS)
DEFAULT_ASK_TIMEOUT_S = 60.0
#: What a POSIX user name looks like (useradd's rule, a little wider).
ACCOUNT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
#: An OpenSSH public key line (the type and base64 checked here; the key itself is
#: parsed when a fix is checked, with asyncssh, which an idle agent does not load).
SSH_KEY_RE = re.compile(r"(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|ssh-rsa|"
                        r"sk-ssh-ed25519@openssh\.com) [A-Za-z0-9+/]+={0,3}( [ -~]{0,200})?")
FIX_ID_RE = re.compile(r"[a-z][a-z0-9-]{1,47}")
MAX_OFFLINE_KEYS = 32
MAX_ALLOWED_IDS = 1024


@dataclass(frozen=True)
class FixPolicy:
    """``[fix]``: what this machine's administrator allows of approved fixes."""

    decision: str = "ask"
    offline_keys: tuple[str, ...] = ()
    required_offline: int = 0
    #: Only these fix ids may run (empty: any approved fix).
    allowed_ids: tuple[str, ...] = ()

    def allows(self, fix_id: str) -> bool:
        return self.decision != "deny" and (not self.allowed_ids or fix_id in self.allowed_ids)


#: A CSS selector or URL glob from the policy: one printable line, bounded.
POLICY_TEXT_RE = re.compile(r"[ -~]{1,300}")
MAX_COBROWSE_ITEMS = 64


#: The browser's own error pages (a navigation refused by ``allowed_urls``, a name that
#: does not resolve...): they show the address they could not load, query included.
#: Never recorded, as a private page is not, whatever the policy says.
BROWSER_ERROR_PAGES = ("chrome-error://*",)


@dataclass(frozen=True)
class CobrowsePolicy:
    """``[cobrowse]``: what this machine's administrator says of co-browsing."""

    browser: str = ""
    headless: str = "auto"  # auto | true | false
    mask_selectors: tuple[str, ...] = ()
    block_selectors: tuple[str, ...] = ()
    private_urls: tuple[str, ...] = ()
    allowed_urls: tuple[str, ...] = ()
    screencast: bool = False

    @property
    def hidden_urls(self) -> tuple[str, ...]:
        """The pages never recorded: ``private_urls`` and the browser's error pages."""
        return (*self.private_urls, *BROWSER_ERROR_PAGES)


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Policy:
    capabilities: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULTS))
    ask_timeout_s: float = DEFAULT_ASK_TIMEOUT_S
    source: str = "defaults"
    #: ``[shell] account``: the account the terminal runs as ("" = the agent's own).
    shell_account: str = ""
    #: ``[ask] command``: the consent program, argv (empty = the built-in dialog).
    ask_command: tuple[str, ...] = ()
    #: ``[fix]``: approved fixes.
    fix: FixPolicy = field(default_factory=FixPolicy)
    #: ``[cobrowse]``: the co-browse browser and what it keeps private.
    cobrowse: CobrowsePolicy = field(default_factory=CobrowsePolicy)

    def decision(self, capability: str) -> str:
        """``allow``, ``ask`` or ``deny``; unknown capabilities are denied."""
        return self.capabilities.get(capability, "deny")

    def summary(self) -> dict[str, str]:
        return dict(sorted(self.capabilities.items()))


def policy_path(state_root: Path | None, explicit: Path | None = None,
                environ: Mapping[str, str] | None = None) -> tuple[Path | None, bool]:
    """Which file applies, and whether it must exist (it must when named)."""
    env = os.environ if environ is None else environ
    if explicit is not None:
        return explicit, True
    if env.get(ENV_POLICY):
        return Path(env[ENV_POLICY]).expanduser(), True
    if state_root is not None and (state_root / POLICY_NAME).exists():
        return state_root / POLICY_NAME, True
    if SYSTEM_POLICY.exists():
        return SYSTEM_POLICY, True
    return None, False


def load_policy(state_root: Path | None = None, explicit: Path | None = None,
                environ: Mapping[str, str] | None = None) -> Policy:
    path, required = policy_path(state_root, explicit, environ)
    if path is None:
        return Policy()
    try:
        with open(path, "rb") as fh:
            table = tomllib.load(fh)
    except FileNotFoundError as exc:
        if required:
            raise PolicyError(f"policy file {path} does not exist") from exc
        return Policy()
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy file {path}: {exc}") from exc
    except OSError as exc:
        raise PolicyError(f"policy file {path}: {exc.strerror or exc}") from exc
    return from_table(table, str(path))


def from_table(table: Mapping[str, Any], source: str = "defaults") -> Policy:
    unknown = set(table) - {"capabilities", "ask", "shell", "fix", "cobrowse"}
    if unknown:
        raise PolicyError(f"{source}: unknown table(s) {sorted(unknown)} "
                          "(known: [capabilities], [ask], [shell], [fix], [cobrowse])")
    caps = table.get("capabilities", {})
    ask = table.get("ask", {})
    shell = table.get("shell", {})
    if not isinstance(caps, dict) or not isinstance(ask, dict) or not isinstance(shell, dict):
        raise PolicyError(f"{source}: [capabilities], [ask] and [shell] must be tables")
    decisions = dict(DEFAULTS)
    for name, value in caps.items():
        if not CAPABILITY_RE.fullmatch(name):
            raise PolicyError(f"{source}: {name!r} is not a capability name")
        if value not in DECISIONS:
            raise PolicyError(f"{source}: capabilities.{name} must be one of "
                              f"{', '.join(DECISIONS)}, not {value!r}")
        decisions[name] = value
    timeout = ask.get("timeout_s", DEFAULT_ASK_TIMEOUT_S)
    if set(ask) - {"timeout_s", "command"}:
        raise PolicyError(f"{source}: [ask] knows only timeout_s and command")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
            1 <= timeout <= 3600):
        raise PolicyError(f"{source}: ask.timeout_s must be a number of seconds from 1 to 3600")
    command = ask.get("command", [])
    if not isinstance(command, list) or len(command) > 32 or not all(
            isinstance(a, str) and a and "\0" not in a for a in command):
        raise PolicyError(f"{source}: ask.command must be a list of strings (the program "
                          "and its arguments)")
    if set(shell) - {"account"}:
        raise PolicyError(f"{source}: [shell] knows only account")
    account = shell.get("account", "")
    if not isinstance(account, str) or not ACCOUNT_RE.fullmatch(account or "x"):
        raise PolicyError(f"{source}: shell.account must be a user name of this machine")
    return Policy(decisions, float(timeout), source, account, tuple(command),
                  fix_policy(table.get("fix", {}), source),
                  cobrowse_policy(table.get("cobrowse", {}), source))


def fix_policy(fix: Any, source: str) -> FixPolicy:
    """``[fix]``, checked: a typo in it is an error, never a silent grant."""
    if not isinstance(fix, dict):
        raise PolicyError(f"{source}: [fix] must be a table")
    if set(fix) - {"decision", "offline_keys", "required_offline", "allowed_ids"}:
        raise PolicyError(f"{source}: [fix] knows only decision, offline_keys, "
                          "required_offline and allowed_ids")
    decision = fix.get("decision", "ask")
    if decision not in DECISIONS:
        raise PolicyError(f"{source}: fix.decision must be one of {', '.join(DECISIONS)}, "
                          f"not {decision!r}")
    keys = fix.get("offline_keys", [])
    if (not isinstance(keys, list) or len(keys) > MAX_OFFLINE_KEYS
            or not all(isinstance(k, str) and SSH_KEY_RE.fullmatch(k.strip()) for k in keys)):
        raise PolicyError(f"{source}: fix.offline_keys must be a list of up to "
                          f"{MAX_OFFLINE_KEYS} OpenSSH public key lines (\"ssh-ed25519 AAAA...\")")
    required = fix.get("required_offline", 0)
    if isinstance(required, bool) or not isinstance(required, int) or not (
            0 <= required <= len(keys)):
        raise PolicyError(f"{source}: fix.required_offline must be a whole number from 0 to "
                          f"the number of offline_keys ({len(keys)})")
    ids = fix.get("allowed_ids", [])
    if (not isinstance(ids, list) or len(ids) > MAX_ALLOWED_IDS
            or not all(isinstance(i, str) and FIX_ID_RE.fullmatch(i) for i in ids)):
        raise PolicyError(f"{source}: fix.allowed_ids must be a list of fix ids")
    return FixPolicy(decision, tuple(k.strip() for k in keys), required, tuple(ids))


def cobrowse_policy(table: Any, source: str) -> CobrowsePolicy:
    """``[cobrowse]``, checked: a typo in it is an error, never a silent default."""
    known = {"browser", "headless", "mask_selectors", "block_selectors", "private_urls",
             "allowed_urls", "screencast"}
    if not isinstance(table, dict):
        raise PolicyError(f"{source}: [cobrowse] must be a table")
    if set(table) - known:
        raise PolicyError(f"{source}: [cobrowse] knows only {', '.join(sorted(known))}")
    browser = table.get("browser", "")
    if not isinstance(browser, str) or len(browser) > 4096 or "\0" in browser:
        raise PolicyError(f"{source}: cobrowse.browser must be the path of a browser")
    headless = table.get("headless", "auto")
    if isinstance(headless, bool):
        headless = "true" if headless else "false"
    if headless not in ("auto", "true", "false"):
        raise PolicyError(f"{source}: cobrowse.headless must be \"auto\", true or false")
    screencast = table.get("screencast", False)
    if not isinstance(screencast, bool):
        raise PolicyError(f"{source}: cobrowse.screencast must be true or false")
    lists: dict[str, tuple[str, ...]] = {}
    for name in ("mask_selectors", "block_selectors", "private_urls", "allowed_urls"):
        items = table.get(name, [])
        if (not isinstance(items, list) or len(items) > MAX_COBROWSE_ITEMS
                or not all(isinstance(i, str) and POLICY_TEXT_RE.fullmatch(i) for i in items)):
            raise PolicyError(f"{source}: cobrowse.{name} must be a list of up to "
                              f"{MAX_COBROWSE_ITEMS} strings (printable, 1 to 300 characters)")
        lists[name] = tuple(items)
    return CobrowsePolicy(browser, headless, lists["mask_selectors"], lists["block_selectors"],
                          lists["private_urls"], lists["allowed_urls"], screencast)
