"""Typed errors with a human sentence: the GUI shows `str(error)` as is."""


class ExplorerError(Exception):
    """Base of every error LM Explorer raises on purpose."""


class ModelLoadError(ExplorerError):
    """A model could not be loaded (missing, corrupt, unsupported, refused for safety, offline)."""


class InputError(ExplorerError):
    """A prompt or a setting is not usable as given."""


class PromptTooLongError(InputError):
    """The prompt has more tokens than the model's context window."""

    def __init__(self, n_tokens: int, limit: int):
        self.n_tokens = n_tokens
        self.limit = limit
        super().__init__(
            f"The prompt is {n_tokens} tokens long but the model's context holds {limit}. "
            "Shorten it, or truncate it to the last tokens that fit."
        )


class RunFileError(ExplorerError):
    """A saved run file is damaged, foreign, inconsistent or from a newer version."""


class Cancelled(ExplorerError):  # noqa: N818 - it is a signal, not a failure
    """The run was cancelled by the user."""
