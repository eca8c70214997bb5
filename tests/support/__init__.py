"""Helpers that the test suite uses to start real services (PostgreSQL, …).

The rule for everything in here, and for every test:

    **Every process a test starts is stopped by PID in a ``finally``.**

The machines that run this suite are shared with other people's processes, so a
test never stops anything by name (no ``pkill``, ``killall``, ``pg_ctlcluster``),
never uses a system-wide socket, port or data directory, and never relies on the
garbage collector or interpreter exit to clean up. It records the PID of what it
started, and in a ``finally`` (or a fixture's teardown after ``yield``) stops
exactly that PID, waits for it with a deadline, and escalates to SIGKILL if the
deadline passes. :class:`support.postgres.PostgresServer` is the worked example.

This directory is importable as the top-level package ``support`` because
``tests/`` has no ``__init__.py`` and pytest's default ``prepend`` import mode
puts the directory of ``tests/conftest.py`` on ``sys.path``.
"""
