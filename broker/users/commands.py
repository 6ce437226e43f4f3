"""`slipstream passwd` (make a password hash for the --users file) and `slipstream users`
(check a users file and say who may do what, or print it for nats-server)."""

from __future__ import annotations

import argparse
import getpass
import re
import sys
from pathlib import Path

from broker import cli
from broker.client import DEFAULT_STREAM
from broker.users.passwords import hash_password, new_password
from broker.users.table import USER_NAME, UsersFileError, load_users

PASSWD_DESCRIPTION = """\
Make the password hash a user's entry in the --users file needs
(docs/security.md). By default a strong random password is made and printed
once: give it to whoever runs as that user (--user NAME --password ..., or
SLIPSTREAM_USER and SLIPSTREAM_PASSWORD). With --file the user's password line
is written into that file (the user's table is added if it is not there); a
running broker takes it on SIGHUP."""


def passwd_main(argv: list[str], prog: str) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=PASSWD_DESCRIPTION)
    parser.add_argument("user", help="the user's name (letters, digits, '_', '.', '-')")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", action="store_true",
                        help="type the password (twice) instead of making a random one")
    source.add_argument("--stdin", action="store_true",
                        help="read the password from the first line of standard input")
    parser.add_argument("--file", type=Path, metavar="USERS.toml",
                        help="write the hash into this users file")
    args = parser.parse_args(argv)
    if not USER_NAME.match(args.user):
        return cli.fail(prog, f"{args.user!r} is not a user name: 1 to 64 letters, digits, "
                        "'_', '.' or '-', starting with a letter or digit", cli.EXIT_USAGE)
    made = not (args.prompt or args.stdin)
    if args.stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif args.prompt:
        password = getpass.getpass(f"password for {args.user}: ")
        if getpass.getpass("again: ") != password:
            return cli.fail(prog, "the two passwords differ", cli.EXIT_USAGE)
    else:
        password = new_password()
    if not password:
        return cli.fail(prog, "an empty password is refused", cli.EXIT_USAGE)
    hashed = hash_password(password)
    if made:
        print(f"password for {args.user!r}: {password}", file=sys.stderr)
    if args.file is None:
        print(f"[users.{args.user}]\npassword = \"{hashed}\"")
        return cli.EXIT_OK
    try:
        text = args.file.read_text(encoding="utf-8") if args.file.exists() else ""
        args.file.write_text(with_password(text, args.user, hashed), encoding="utf-8")
    except OSError as exc:
        return cli.fail(prog, f"--file {args.file}: {exc.strerror or exc}")
    print(f"{args.file}: password of {args.user!r} written", file=sys.stderr)
    return cli.EXIT_OK


def with_password(text: str, user: str, hashed: str) -> str:
    """`text` (a users file) with `user`'s password line set to `hashed`, the rest kept."""
    lines = text.splitlines()
    header = re.compile(rf"^\s*\[\s*users\.[\"']?{re.escape(user)}[\"']?\s*\]\s*$")
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    entry = f'password = "{hashed}"'
    if start is None:
        return text + ("\n" if text and not text.endswith("\n") else "") + (
            f"\n[users.{user}]\n{entry}\n")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")),
               len(lines))
    for i in range(start + 1, end):
        if re.match(r"^\s*password\s*=", lines[i]):
            lines[i] = entry
            break
    else:
        lines.insert(start + 1, entry)
    return "\n".join(lines) + "\n"


def users_main(argv: list[str], prog: str) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description="Check a --users file (as the broker will at start and on "
        "SIGHUP) and say who may do what; with --nats, print it as nats-server authorization "
        "instead (docs/scale-out.md).")
    parser.add_argument("file", type=Path, help="the users file (docs/security.md)")
    parser.add_argument("--nats", action="store_true",
                        help="print the nats-server 'authorization' block that gives each user "
                             "the same permissions on JetStream")
    parser.add_argument("--stream", default=DEFAULT_STREAM,
                        help="with --nats: the JetStream stream (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        table = load_users(args.file)
    except UsersFileError as exc:
        return cli.fail(prog, str(exc), cli.EXIT_USAGE)
    if args.nats:
        from broker.users.nats import authorization_block

        print(authorization_block(table, args.stream))
        return cli.EXIT_OK
    for user in table.users.values():
        how = ", ".join(w for w, has in (("password", user.password_hash),
                                          (f"cert {user.cert_name!r}", user.cert_name),
                                          ("anonymous", user.name == table.anonymous)) if has)
        print(f"{user.name} ({how}): publish {user.publish.describe()}; "
              f"subscribe {user.subscribe.describe()}")
    return cli.EXIT_OK
