"""runbook-exec: run declarative runbooks on real servers, with an audit trail that proves it.

This module imports nothing: the `runbook-exec` command starts in `entry`, which must stay
cheap enough to hand a command to a warm controller in a few milliseconds. The errors users
meet are in `runbook_exec.errors`.
"""

__version__ = "0.1.0"
