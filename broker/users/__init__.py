"""Users, permissions and per-user quotas: who may connect, publish, subscribe, and how much.

passwords.py hashes and checks credentials; table.py reads the --users file;
permissions.py decides topics and patterns; accounts.py is what the broker
keeps per user while it runs (logins, quotas, counters). docs/security.md.
"""
