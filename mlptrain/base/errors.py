"""Errors the library raises for a user to read; the CLI turns each into one line and its exit code."""


class MlptrainError(Exception):
    """A problem the user can fix. `exit_code` is what the CLI exits with: 2 bad input, 1 failed run."""

    exit_code = 2


class ConfigError(MlptrainError):
    """A config file, a --set override or a command-line value is invalid."""


class DataError(MlptrainError):
    """A dataset is missing, unreadable or inconsistent with the config."""


class DataMissing(DataError):
    """A dataset's files are not where the config says, and could not be downloaded."""


class CheckpointError(MlptrainError):
    """A checkpoint is missing, unreadable, not ours, or inconsistent."""


class RunFailed(MlptrainError):
    """A run started but could not finish (e.g. the loss diverged)."""

    exit_code = 1


class Interrupted(MlptrainError):
    """A run or sweep stopped on a signal after saving its exact place; exit 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, message: str, resume_command: str, signum: int):
        super().__init__(message)
        self.resume_command = resume_command
        self.exit_code = 128 + signum


class WriteFailed(MlptrainError):
    """A file could not be written (a full disk, say); the file named keeps its previous contents."""

    exit_code = 1

    def __init__(self, message: str, path=None, reason: str = ""):
        super().__init__(message)
        self.path, self.reason = path, reason or message
