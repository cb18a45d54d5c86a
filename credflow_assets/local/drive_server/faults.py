"""Injected failures for tests: the next N Drive requests, or a seeded random share of them,
answered with the error Drive gives for that status (set through POST /_admin/faults)."""

from __future__ import annotations

import random
import threading

from .errors import ApiError, bad_request

_FAULT_ERRORS = {
    400: ("global", "badRequest", "Bad Request"),
    401: ("global", "authError", "Invalid Credentials"),
    403: ("usageLimits", "userRateLimitExceeded", "User Rate Limit Exceeded"),
    404: ("global", "notFound", "Not Found"),
    429: ("usageLimits", "rateLimitExceeded", "Rate Limit Exceeded"),
}


class Faults:
    """Injected failures for Drive requests: the next N, or a seeded random share."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.configure({})

    def configure(self, spec: dict) -> dict:
        known = {"fail_next", "status", "rate", "statuses", "seed", "methods"}
        if not isinstance(spec, dict) or set(spec) - known:
            raise bad_request(f"Fault spec keys must be among {sorted(known)}.")
        try:
            fail_next = int(spec.get("fail_next", 0))
            status = int(spec.get("status", 429))
            rate = float(spec.get("rate", 0.0))
            statuses = [int(s) for s in spec.get("statuses", [429, 403, 500])]
            methods = [m.upper() for m in spec["methods"]] if spec.get("methods") else None
        except (TypeError, ValueError) as error:
            raise bad_request(f"Invalid fault spec: {error}") from None
        if fail_next < 0 or not 0.0 <= rate <= 1.0 or not statuses:
            raise bad_request("Invalid fault spec: fail_next >= 0, 0 <= rate <= 1, statuses.")
        with self._lock:
            self.fail_next, self.status, self.rate = fail_next, status, rate
            self.statuses, self.methods = statuses, methods
            self.random = random.Random(spec.get("seed"))
            self.injected = self.requests = 0
        return self.state()

    def pick(self, method: str) -> int | None:
        """The status to fail this request with, or None to serve it."""
        with self._lock:
            self.requests += 1
            if self.methods is not None and method not in self.methods:
                return None
            if self.fail_next > 0:
                self.fail_next -= 1
                self.injected += 1
                return self.status
            if self.rate and self.random.random() < self.rate:
                self.injected += 1
                return self.random.choice(self.statuses)
        return None

    def state(self) -> dict:
        return {
            "fail_next": self.fail_next, "status": self.status, "rate": self.rate,
            "statuses": self.statuses, "methods": self.methods,
            "injected": self.injected, "requests": self.requests,
        }


def fault_error(status: int) -> ApiError:
    domain, reason, message = _FAULT_ERRORS.get(status, ("global", "backendError", "Backend Error"))
    return ApiError(status, reason, message, domain=domain)
