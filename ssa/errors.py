"""The one domain error type: the CLI turns it into a one-line message and exit code 1."""


class SSAError(ValueError):
    """Bad input or an unusable environment; the message names the value and the fix."""
