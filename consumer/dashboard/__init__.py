"""The live web dashboard: `python -m consumer dashboard` (see app.py)."""
