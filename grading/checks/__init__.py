"""The checks: one pytest module per PROTOCOL.md section, each check named by its spec point.

Each check carries `@spec(point, needs=(...), strict=...)` (grading/plugin.py):
the point it tests, the points without which it could not mean anything, and
whether it is a MUST (a fail) or a SHOULD (non-strict). Checks use connections
as real clients do: one per client session, a fresh one for each independent
case; only the checks about connections themselves reuse one across sessions.
"""
