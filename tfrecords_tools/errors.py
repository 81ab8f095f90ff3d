"""The one error type that bad input raises, so that `--skip-bad` can catch exactly it."""


class BadInputError(ValueError):
    """An input file (or table row) that cannot be converted.

    The message always starts with the offending file, then says what is wrong, e.g.
    `sub-01_bold.nii.gz: not 4D (shape (64, 64, 30))`.
    """

    def __init__(self, source: str, problem: str):
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")
