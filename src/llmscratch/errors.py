"""The one error type for user mistakes.

Anything the user can fix (a missing file, an unknown config key, a run
directory that is not a run) raises `LLMScratchError` with a one-line message:
what is wrong, the value received, and what to do. The CLI prints that line to
stderr and exits with status 2, without a traceback. Internal invariants use
`assert`, and real bugs still show their traceback.
"""


class LLMScratchError(Exception):
    """A user-facing error whose message is one line that says how to fix it."""


class TrainingInterrupted(Exception):
    """Ctrl-C during training; a checkpoint of the last finished step was saved.

    Not a mistake, so not an `LLMScratchError`: the CLI reports it and exits 130.
    """

    def __init__(self, step: int) -> None:
        super().__init__(f"interrupted at step {step}")
        self.step = step
