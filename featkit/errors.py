"""The one exception type users see: a clear message, never a traceback."""


class FeatkitError(ValueError):
    """A problem with user input or state that the CLI prints as a message (exit 2).

    It subclasses ValueError so library callers can catch it the sklearn way.
    """


def choices_message(kind: str, value: object, valid: "list[str] | tuple[str, ...]") -> str:
    """``unknown backbone 'resnet51'; valid choices: resnet18, resnet50, ...``"""
    return f"unknown {kind} {value!r}; valid choices: {', '.join(sorted(valid)) or '(none)'}"
