"""The one error type labkit raises for bad input: a single line naming what is wrong and what is valid."""


class LabkitError(ValueError):
    """Bad input to labkit. The message names the problem and what would be valid."""
