"""User-facing errors.

`AutoSegError` is raised for anything the user can fix (bad input, missing files, wrong options). The CLI
prints its message without a traceback (unless ``--debug``) and exits with status 2. Messages name the
file, what was expected, what was found and how to fix it.
"""


class AutoSegError(Exception):
    """An error caused by input the user can fix; its message is shown as is."""


class DatasetError(AutoSegError):
    """A dataset folder is malformed. ``problems`` lists every problem found, one message each."""

    def __init__(self, message: str, problems: "list[str] | None" = None):
        self.problems = list(problems or [])
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)
