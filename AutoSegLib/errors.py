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


class WriteError(AutoSegError):
    """A file could not be written completely (disk full, read-only, no permission, ...). The message names
    the file and the cause; the previous file of that name, if any, is unchanged."""


# errno -> the cause in words. Kept here so that the CLI and the atomic writer phrase OS errors alike.
def _causes():
    import errno
    return {
        errno.ENOSPC: "the disk is full (no space left on the device)",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EFBIG: "the file is larger than the file system or the process's file-size limit allows",
        errno.ENOTDIR: "a file stands where a folder is expected",
        errno.EISDIR: "a folder stands where a file is expected",
        errno.ENOENT: "no such file or folder",
        errno.EEXIST: "it exists already",
        errno.ENAMETOOLONG: "the name is too long",
        errno.EIO: "input/output error (a failing disk or a network share that went away?)",
    }


def os_error_cause(exc: OSError) -> str:
    """The cause of ``exc`` in words, without a path ('the disk is full (...)', 'permission denied', ...)."""
    return _causes().get(exc.errno) or exc.strerror or str(exc) or type(exc).__name__


def os_error_message(exc: OSError, path=None) -> str:
    """``exc`` in words: '<path>: <cause>.' (the path the OS names, else ``path``), for the user."""
    cause = os_error_cause(exc)
    where = exc.filename if exc.filename is not None else path
    message = f"{where}: {cause}" if where is not None else cause
    if exc.filename2 is not None:
        message += f" (with {exc.filename2})"
    return message + "."
