"""User-facing errors: one clear line that says what was wrong and what to do."""


class StudioError(Exception):
    """Base class for every error the studio reports to a user (CLI, UI, HTTP) as one line."""


class InputError(StudioError, ValueError):
    """Bad user input: a corrupt image, a wrong mask, an empty prompt, a malformed request."""


class ModelNotFoundError(StudioError, FileNotFoundError):
    """A model id or folder that is not available locally; the message says how to get it."""
