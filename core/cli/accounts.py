"""``users``: add, list, disable and enable accounts."""

from __future__ import annotations

import sys

from core.accounts.admin import set_user_active
from core.accounts.auth import ROLES, create_user
from core.cli.common import cli_user, existing_store, open_store, table


def cmd_users(args) -> int:
    # only `users add` may start a new database (the first account); list, disable and
    # enable need one that is there
    store = open_store(args) if args.users_cmd == "add" else existing_store(args)
    if args.users_cmd == "add":
        password = sys.stdin.readline().rstrip("\n")
        reader = create_user(store, args.name, args.role, password, actor="cli")
        print(f"added {reader.username} ({reader.role})")
    elif args.users_cmd == "list":
        print(table([(r.username, r.role, "active" if r.active else "disabled")
                     for r in store.list_readers()], ("user", "role", "account")))
    elif args.users_cmd in ("disable", "enable"):
        # the Admin page's path: an unknown name is an error, and the change is audited
        set_user_active(store, cli_user(), args.name, args.users_cmd == "enable")
        print(f"{args.users_cmd}d {args.name}")
    return 0


def add_users(sub) -> None:
    p = sub.add_parser("users", help="manage users")
    us = p.add_subparsers(dest="users_cmd", required=True)
    a = us.add_parser("add", help="add a user; the password is read from stdin")
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=list(ROLES))
    us.add_parser("list", help="every account with role and whether it is active")
    d = us.add_parser("disable", help="an account that can no longer sign in (kept, audited)")
    d.add_argument("name")
    d = us.add_parser("enable", help="let a disabled account sign in again")
    d.add_argument("name")
    p.set_defaults(func=cmd_users)
