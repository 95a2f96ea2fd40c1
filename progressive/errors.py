"""The error every layer raises for a problem the user can fix.

`BadInput` names the problem in its first line. The commands report it as one `error: ...` line with exit
code 2 (cli/checks.py); a Python caller of the library (`evaluate_run`, `open_trained`) catches it the same way.
"""


class BadInput(Exception):
    """Anything the user can fix; reported as one line with exit code 2."""
