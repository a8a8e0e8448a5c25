"""The one domain error type: the CLI turns it into a one-line message, exit code 2 when it is
raised while planning (a usage error) and 1 after, or for a `FatalError` (the machine cannot
do the job: a read-only or full out-dir)."""


class SSAError(ValueError):
    """Bad input or an unusable environment; the message names the value and the fix."""


class FatalError(SSAError):
    """Bad input that every image would hit (e.g. `--vote soft` with a labels-only segmentor):
    the run stops at the first image instead of recording the same failure for each."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type's name when the message is empty),
    cut to `limit` characters with "..." when longer: for one-line error messages."""
    text = str(exc)
    first = text.splitlines()[0] if text.strip() else type(exc).__name__
    return first if limit is None or len(first) <= limit else first[:limit] + "..."
