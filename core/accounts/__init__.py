"""Accounts: passwords, roles, sessions, and the permission checks every core call goes through.

Owns who may do what: password rules and hashing, sign-in with its throttle, sessions and
their expiry, ``authorize`` (re-reading the account on every call, so a disabled account can do
nothing), and the admin actions (imports, users, generation status), each checked by role.

Modules:
    auth      users, passwords, sign-in, sessions, ``authorize``
    sessions  the signed, expiring, revocable token that keeps a session across a refresh
    admin     the Admin page's actions: import reports, list and add users, start generation

May import: config, errors, util, store, ingest.
"""
