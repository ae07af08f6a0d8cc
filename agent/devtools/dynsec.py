"""The reference topic ACL (docs/broker/acl) as a mosquitto dynamic-security configuration.

mosquitto 2.0's ``acl_file`` grants every subscription (its SUBACK says granted, and reads are
checked only on delivery); the dynamic-security plugin checks subscriptions too, so a device
that subscribes to another device's topics gets MQTT 5 "Not authorized" (0x87) in its SUBACK.
Its 2.0 ACLs have no ``%u`` substitution, so each device gets a role of its own, made from the
ACL file's ``pattern`` lines with ``%u`` replaced by the device id; each ``user`` block becomes
that user's role. With mutual TLS and ``use_identity_as_username`` no password is set: the
certificate is the identity (mosquitto does not ask the plugin to authenticate such a client).
See docs/security.md."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from agent.errors import AgentError

PLUGIN_PATHS = (Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"),
                Path("/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so"),
                Path("/usr/lib/mosquitto_dynamic_security.so"),
                Path("/usr/local/lib/mosquitto_dynamic_security.so"))


def find_plugin() -> Path | None:
    """The dynamic-security plugin of the installed mosquitto, if there is one."""
    return next((p for p in PLUGIN_PATHS if p.is_file()), None)


def _acl(kind: str, topic: str) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "priority": 0, "allow": True}


def _rules(access: str, topic: str) -> list[dict[str, Any]]:
    """One ACL file line as dynamic-security ACLs: write is a publish the client sends; read
    is both the subscription and the delivery."""
    out = []
    if access in ("write", "readwrite"):
        out.append(_acl("publishClientSend", topic))
    if access in ("read", "readwrite"):
        # mosquitto 2.0 asks the plugin about a shared subscription with its $share/GROUP/
        # prefix (ingest subscribes that way): the same filter under any group is granted.
        out += [_acl("subscribePattern", topic), _acl("subscribePattern", f"$share/+/{topic}"),
                _acl("publishClientReceive", topic)]
    return out


def parse_acl(text: str) -> tuple[list[tuple[str, str]], dict[str, list[tuple[str, str]]]]:
    """(pattern lines, user -> topic lines) of a mosquitto ACL file, each as (access, topic)."""
    patterns: list[tuple[str, str]] = []
    users: dict[str, list[tuple[str, str]]] = {}
    user: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if words[0] == "user" and len(words) == 2:
            user = words[1]
            users.setdefault(user, [])
        elif words[0] in ("pattern", "topic") and len(words) == 3 and \
                words[1] in ("read", "write", "readwrite"):
            if words[0] == "pattern":
                patterns.append((words[1], words[2]))
            elif user is not None:
                users[user].append((words[1], words[2]))
            else:
                raise AgentError(f"ACL line {number}: a topic line before any user line",
                                 fix="anonymous access is not part of the reference ACL")
        else:
            raise AgentError(f"ACL line {number}: {line!r} is not understood here",
                             fix="use 'user NAME', 'pattern|topic read|write|readwrite TOPIC'")
    return patterns, users


def dynsec_config(acl_text: str, devices: list[str]) -> dict[str, Any]:
    """The plugin's configuration (its JSON file) for ``devices`` under the ACL file
    ``acl_text``: everything not granted is refused, subscriptions included."""
    patterns, users = parse_acl(acl_text)
    clients, roles = [], []
    for device in devices:
        if device in users or any(c in device for c in "+#/%"):
            raise AgentError(f"device id {device!r} cannot have a role of its own",
                             fix="device ids are topic segments, never a service's user name")
        rules = [r for access, topic in patterns
                 for r in _rules(access, topic.replace("%u", device))]
        roles.append({"rolename": f"device-{device}", "acls": rules})
        clients.append({"username": device, "textname": "device",
                        "roles": [{"rolename": f"device-{device}"}]})
    for user, lines in users.items():
        roles.append({"rolename": f"user-{user}",
                      "acls": [r for access, topic in lines for r in _rules(access, topic)]})
        clients.append({"username": user, "textname": "service",
                        "roles": [{"rolename": f"user-{user}"}]})
    return {"defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                                 "subscribe": False, "unsubscribe": True},
            "clients": clients, "groups": [], "roles": roles}


def write_dynsec(path: Path, acl_text: str, devices: list[str]) -> Path:
    """Write the configuration (0600: the plugin keeps password hashes in it once any are
    set) atomically; the broker loads it at start (``plugin_opt_config_file``)."""
    body = json.dumps(dynsec_config(acl_text, devices), indent=1)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".dynsec-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(body)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
