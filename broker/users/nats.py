"""The users file as nats-server authorization: `slipstream users FILE --nats`.

On NATS JetStream (`--broker nats://...`) the server checks who may do what,
so the same users file is printed as an `authorization { users = [...] }`
block that gives each user the same publish and subscribe patterns, plus the
JetStream API subjects slipstream's client needs (docs/scale-out.md):

- its publishes are plain publishes to the topic (topics are subjects);
- a subscription is a consumer made with `$JS.API.CONSUMER.CREATE.<stream>.
  <name>.<filter>`, so a subscribe pattern P becomes leave to create
  consumers filtered within P (and P = `>`, consumers without a filter);
- its replies and deliveries come to `_INBOX_<user>.>`, which only it may read
  (the anonymous user's to `_INBOX.>`).

Passwords: the file keeps scrypt hashes, which nats-server cannot check; each
user's password is read from an environment variable of nats-server's
(`$SLIPSTREAM_PASSWORD_<USER>`), which the operator sets (or replaces with a
bcrypt hash from `nats server passwd`). What does not map: quotas (NATS puts
limits on accounts, not users), and a deny pattern inside a wider allowed
subscription (a JetStream consumer cannot leave topics out): on NATS a deny
pattern refuses subscriptions within it, not a wider one.
"""

from __future__ import annotations

import json
import re
import secrets

from broker.jetstream.subscription import INBOX_PREFIX
from broker.users.table import User, UserTable


def password_variable(user: str) -> str:
    return "SLIPSTREAM_PASSWORD_" + re.sub(r"[^A-Z0-9]", "_", user.upper())


def permissions(user: User, stream: str,
                anonymous: bool = False) -> dict[str, dict[str, list[str]]]:
    """One user's nats-server permissions (the anonymous user's client does not know its
    name, so its inboxes are the plain `_INBOX.>`, which no named user's are)."""
    api = f"$JS.API.CONSUMER.CREATE.{stream}.*"
    creates = [api if pattern == ">" else f"{api}.{pattern}" for pattern in user.subscribe.allow]
    publish_allow = [*user.publish.allow, "$JS.API.INFO", f"$JS.API.STREAM.INFO.{stream}",
                     f"$JS.API.CONSUMER.INFO.{stream}.*", f"$JS.API.CONSUMER.DELETE.{stream}.*",
                     f"$JS.ACK.{stream}.>", *creates]
    publish_deny = [*user.publish.deny, *(f"{api}.{pattern}" for pattern in user.subscribe.deny)]
    publish: dict[str, list[str]] = {"allow": publish_allow}
    if publish_deny:
        publish["deny"] = publish_deny
    inboxes = ["_INBOX.>"] if anonymous else [f"{INBOX_PREFIX}{user.name}.>"]
    return {"publish": publish, "subscribe": {"allow": inboxes}}


def authorization_block(table: UserTable, stream: str) -> str:
    """nats-server configuration: the users and, if the file has one, `no_auth_user`."""
    lines = [f"# From {table.source} by `slipstream users --nats` (docs/scale-out.md).",
             "# Set each SLIPSTREAM_PASSWORD_<USER> in nats-server's environment, or put a",
             "# bcrypt hash from `nats server passwd` in its place."]
    if table.anonymous is not None:
        lines.append(f"no_auth_user: {json.dumps(table.anonymous)}")
    lines += ["authorization {", "  users = ["]
    for user in table.users.values():
        if user.password_hash is not None:
            password = "$" + password_variable(user.name)
        elif user.name == table.anonymous:
            password = json.dumps(secrets.token_urlsafe(24))  # never typed: no_auth_user
        else:
            password = None
        name = user.name if password is not None else f"CN={user.cert_name}"
        lines.append("    {")
        lines.append(f"      user: {json.dumps(name)}")
        if password is not None:
            lines.append(f"      password: {password}")
        else:
            lines.append("      # a client certificate: needs tls { verify_and_map: true }")
        rules = permissions(user, stream, anonymous=user.name == table.anonymous)
        lines.append(f"      permissions: {json.dumps(rules)}")
        lines.append("    }")
    lines += ["  ]", "}"]
    return "\n".join(lines)
