"""The one exception type that means "the user can fix this": run.py prints it on one line and exits 2."""


class PipelineError(Exception):
    """Bad config value, unknown phase, missing upstream output, unreadable input file."""
