"""The one exception type for a user's mistake: the CLI prints it on one line and exits 2."""


class ConvlabError(Exception):
    """Bad input, a bad config or an environment problem the user can fix.

    The message is one line that names the bad value and what to do about it.
    """


def check_at_least(flag: str, value, minimum) -> None:
    """A one-line error unless `value` (of the option --`flag`) is at least `minimum`."""
    if value is None or value < minimum:
        raise ConvlabError(f"--{flag} must be at least {minimum}, received: {value}")
