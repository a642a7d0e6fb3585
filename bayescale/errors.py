"""Exceptions that carry enough context to tell a user what to fix."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: a file, row or field that is not what bayescale expects.

    The command line turns this into a one-line message on stderr and exit status 2,
    never a traceback.

    Parameters
    ----------
    message
        What was wrong and what was expected.
    file
        The file (or directory) the problem is in, if any.
    field
        The field, column or option at fault, if any.
    row
        The 0-based data row, if the input is a table.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        field: str | None = None,
        row: int | None = None,
    ) -> None:
        self.file = None if file is None else str(file)
        self.field = field
        self.row = row
        self.detail = message
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.row is not None:
            # a CSV's header is line 1, so data row r sits on line r + 2
            where.append(f"row {self.row} (line {self.row + 2})")
        if self.field:
            where.append(f"field '{self.field}'")
        prefix = ": ".join(where)
        return f"{prefix}: {self.detail}" if prefix else self.detail


class InputErrors(InputError):
    """Several input problems found in one load; all are listed, none hidden."""

    def __init__(self, problems: list[InputError]) -> None:
        self.problems = problems
        hint = "nothing was loaded; --skip-invalid loads the valid runs and reports the rest"
        if len(problems) == 1:
            text = f"{problems[0]} ({hint})"
        else:
            text = "\n".join([f"{len(problems)} invalid runs ({hint}):"] + [f"  {p}" for p in problems])
        super().__init__(text)
