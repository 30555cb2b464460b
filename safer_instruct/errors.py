"""The one error type for what a user did wrong."""


class SaferInstructError(Exception):
    """A problem the user can fix: bad input, bad config, a missing model or key.

    The CLI prints its message and exits 2, without a traceback unless ``--debug``.
    """


class DamagedFileError(SaferInstructError):
    """A file the kit keeps (run state, response cache) is damaged: the run stops, naming it and how to recover."""
