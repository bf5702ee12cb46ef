"""Errors that the command line reports as one-line messages; defined apart so that importing them needs no torch."""


class MissingWeightsError(FileNotFoundError):
    """Raised when a teacher's pretrained weights cannot be found offline."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or does not fit the model asked for."""
