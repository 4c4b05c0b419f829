"""The one exception type for problems a user can fix (bad data, bad options, bad files).

The CLI prints these as a single ``error: <message>`` line and exits with status 2. Any other
exception is a bug in this library and is allowed to show a traceback.
"""


class ContractiveError(ValueError):
    """A user-facing problem: the message names what is wrong and, where possible, what to do."""
