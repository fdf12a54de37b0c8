"""The one base class of every error stovtal reports to a user.

Each module raises its own subclass (StoreError, AnnotationError, ...) with a one-line message naming the
file, video or option at fault. Command-line tools catch this base class once (``features.cli_support``) and
print the message without a traceback; any other exception is a bug and keeps its traceback.
"""


class StovtalError(Exception):
    """A one-line problem with the user's input, files or options."""
