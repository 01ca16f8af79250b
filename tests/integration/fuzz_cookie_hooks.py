"""schemathesis hooks for the cookie run of test_fuzz_api.py (loaded through SCHEMATHESIS_HOOKS).

The cookie run is only worth its time if the server took the session cookie and
the CSRF token on every request: a 401, or a 403 ``csrf_failed``, would mean the
fuzzer exercised the sign-in refusal instead of the routes.
"""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    # The schema declares HTTP bearer auth, so schemathesis makes up Authorization
    # headers; a bearer credential wins over the cookie, and the request would test
    # a made-up token instead of the cookie session.
    for name in [h for h in (case.headers or {}) if h.lower() == "authorization"]:
        del case.headers[name]


@schemathesis.check
def cookie_session_accepted(ctx: Any, response: Any, case: Any) -> None:
    if response.status_code == 401:
        raise AssertionError(f"the session cookie was refused: {response.text[:300]}")
    if response.status_code == 403 and "csrf_failed" in response.text:
        raise AssertionError(f"the X-CSRF-Token was refused: {response.text[:300]}")
