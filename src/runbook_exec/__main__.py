"""`python -m runbook_exec` is the same as the `runbook-exec` command."""

from .entry import main

main()
