"""What the page answers when it cannot do what a request asks: an error as JSON, its status and one message."""

from __future__ import annotations

from fastapi.responses import JSONResponse


class ActionError(Exception):
    """An action the daemon refused or could not be asked: (HTTP status, message)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
