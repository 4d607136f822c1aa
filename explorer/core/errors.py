"""Typed errors with a human sentence: the GUI shows `str(error)` as is."""


class ExplorerError(Exception):
    """Base of every error LM Explorer raises on purpose."""

    def __reduce__(self):  # crosses to the GUI process whatever the subclass' __init__ takes
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def _rebuild(cls: type, args: tuple, state: dict) -> ExplorerError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class ModelLoadError(ExplorerError):
    """A model could not be loaded (missing, corrupt, unsupported, refused for safety, offline).

    `needs` names the opt-in that would let it load ("trust_remote_code" or "allow_pickle"), if any.
    """

    def __init__(self, message: str, needs: str | None = None):
        super().__init__(message)
        self.needs = needs


class InputError(ExplorerError):
    """A prompt or a setting is not usable as given."""


class ChatTemplateError(InputError):
    """The model's chat template failed, ran too long or produced too much text."""


class PromptTooLongError(InputError):
    """The prompt has more tokens than the model's context window."""

    def __init__(self, n_tokens: int, limit: int, max_new: int = 0):
        self.n_tokens = n_tokens  # prompt tokens
        self.limit = limit
        self.max_new = max_new
        if max_new >= limit:
            text = (f"Max new tokens ({max_new}) does not fit the model's context ({limit} tokens): "
                    f"lower it below {limit}.")
        elif max_new:
            text = (f"The prompt is {n_tokens} tokens long and {max_new} new tokens are asked for, but the "
                    f"model's context holds {limit}. Shorten it, truncate it to the last tokens that fit, "
                    "or generate fewer tokens.")
        else:
            text = (f"The prompt is {n_tokens} tokens long but the model's context holds {limit}. "
                    "Shorten it, or truncate it to the last tokens that fit.")
        super().__init__(text)


class RunFileError(ExplorerError):
    """A saved run file is damaged, foreign, inconsistent or from a newer version."""


class Cancelled(ExplorerError):  # noqa: N818 - it is a signal, not a failure
    """The run was cancelled by the user."""


class ToolError(InputError):
    """Tool definitions, a tool call or a tool's input are not usable (core/tools.py)."""


class RetrievalError(InputError):
    """A retrieval index is missing, empty, damaged or of another kind, or a folder gives nothing to index."""
