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

    def _format(self, with_file: bool = True) -> str:
        where = []
        if self.file and with_file:
            where.append(self.file)
        if self.row is not None:
            # a CSV's header is line 1, so data row r sits on line r + 2
            where.append(f"row {self.row} (line {self.row + 2})")
        if self.field:
            where.append(f"field '{self.field}'")
        prefix = ": ".join(where)
        return f"{prefix}: {self.detail}" if prefix else self.detail


class InputErrors(InputError):
    """Several input problems found in one load.

    The message stays short whatever their number: a summary line, the first
    :attr:`SHOWN` problems and how many more there are; :attr:`problems` keeps them all.

    Parameters
    ----------
    problems
        Every problem found, in order.
    file
        The table or runs directory they were found in; named once in the summary, and left
        out of each problem line that is in that same file.
    """

    SHOWN = 3  # problems spelled out in the message

    def __init__(self, problems: list[InputError], *, file: str | None = None) -> None:
        self.problems = list(problems)
        hint = "nothing was loaded; --skip-invalid loads the valid runs and reports the rest"
        n = len(self.problems)
        if n == 1:
            text = f"{self.problems[0]} ({hint})"
        else:
            where = f" in {file}" if file else ""
            shown = self.problems if n <= self.SHOWN + 1 else self.problems[: self.SHOWN]
            lines = [f"{n} invalid runs{where} ({hint}):"]
            lines += [f"  {p._format(with_file=p.file != (None if file is None else str(file)))}" for p in shown]
            if len(shown) < n:
                lines.append(f"  ... and {n - len(shown)} more")
            text = "\n".join(lines)
        super().__init__(text)
        # where the problems are: the one problem's place, or the file they all are in
        one = self.problems[0] if n == 1 else None
        self.file = one.file if one is not None else None if file is None else str(file)
        self.row = one.row if one is not None else None
        self.field = one.field if one is not None else None
