"""The one exception type a user sees as a one-line message (the CLI prints it without a traceback)."""


class PropagateError(Exception):
    """Bad input or an unmet requirement that the user can act on.

    The message names the file or value and says what to do; the CLI prints ``error: <message>`` and exits 2.
    """
