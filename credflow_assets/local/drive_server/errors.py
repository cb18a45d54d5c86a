"""Errors the local Drive server answers, in Drive's JSON error shape."""

from __future__ import annotations


class ApiError(Exception):
    """An error answered in Drive's JSON shape."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        location: str | None = None,
        location_type: str = "parameter",
        domain: str = "global",
    ) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message
        self.location, self.location_type, self.domain = location, location_type, domain

    def body(self) -> dict:
        detail = {"domain": self.domain, "reason": self.reason, "message": self.message}
        if self.location:
            detail.update(location=self.location, locationType=self.location_type)
        return {"error": {"code": self.status, "message": self.message, "errors": [detail]}}


def not_found(file_id: str) -> ApiError:
    return ApiError(404, "notFound", f"File not found: {file_id}.", location="fileId")


def bad_request(message: str, reason: str = "badRequest", location: str | None = None) -> ApiError:
    return ApiError(400, reason, message, location=location)
