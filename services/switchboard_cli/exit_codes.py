"""What `switchboard` exits with, and the one exception commands raise to say why.

Commands never print tracebacks for expected failures: they raise CliError with a
message (what went wrong) and a hint (what to do), and __main__ prints both and exits
with the error's code."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    # The server refused or failed (400, 404, 409, 429, 5xx), or the operation failed
    # (the stack did not start, a component is unhealthy).
    FAILED = 1
    # Bad arguments or local configuration (argparse uses 2 as well).
    USAGE = 2
    # Nothing answers: the edge (or the local stack) is not reachable or not running.
    UNREACHABLE = 3
    # Missing or refused credentials: no admin key, a wrong or revoked key (401/403).
    AUTH = 4
    # Ctrl-C (128 + SIGINT), except for `gpu watch`, where Ctrl-C is the normal way out.
    INTERRUPTED = 130


EXIT_CODES_HELP = """\
exit codes:
  0    ok
  1    the server refused or failed the request (400, 404, 409, 429, 5xx), or the
       operation failed (the stack did not start; a component is unhealthy)
  2    usage error: bad arguments, bad local configuration
  3    cannot connect: the edge is unreachable, or the stack is not running
  4    authentication: missing admin or API key, or the key was refused (401, 403)
  130  interrupted (Ctrl-C)
"""


class CliError(Exception):
    """An expected failure: printed as `error: message`, `hint: hint`, then exit(code)."""

    def __init__(
        self, code: ExitCode, message: str, hint: str | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        # Longer context (e.g. a component's log tail), shown after the message.
        self.detail = detail
