"""The one domain error type: the CLI turns it into a one-line message and exit code 1."""


class SSAError(ValueError):
    """Bad input or an unusable environment; the message names the value and the fix."""


class FatalError(SSAError):
    """Bad input that every image would hit (e.g. `--vote soft` with a labels-only segmentor):
    the run stops at the first image instead of recording the same failure for each."""
