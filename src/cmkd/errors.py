"""The project's own errors: each message names the file or field and the fix. The command line prints
them as one line (exit status 2); any other exception is a bug and keeps its traceback."""


class ConfigError(ValueError):
    """A configuration problem, with a message that names the field and the fix."""


class DatasetError(ValueError):
    """A dataset on disk that cannot be used, with a message naming the file and the fix."""


class ImageError(ValueError):
    """An image that cannot be used, with a message naming the file and the fix."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, altered or does not describe its weights."""


class OutputFolderError(RuntimeError):
    """An output folder cannot be used: it holds another run, another process uses it, or it is not writable."""


class FolderInUseError(OutputFolderError):
    """Another process holds the run folder's lock (it may be free later; the other folder errors will not be)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says where and what to lower."""


#: What ``cmkd`` reports as a one-line error.
USER_ERRORS = (ConfigError, DatasetError, ImageError, CheckpointError, OutputFolderError, TrainingDiverged,
               FileNotFoundError)
