"""The one exception type a user is meant to read.

Library code raises :class:`BestieError` for expected failures (bad params, a missing
file, a malformed mask, ...). Stage entry points print its message as one line and exit
non-zero; anything else is a bug and keeps its traceback.
"""


class BestieError(Exception):
    """An expected, user-facing failure: the message names the file or key and the fault."""
