"""uvicorn's HTTP protocol (httptools) with the gateway's refusal answered before any ASGI work.

Under overload most requests are refused, and a refusal through ASGI costs a task, a scope, a
request-response cycle and uvicorn's header checks, taken from the gateway's single core and so from
the requests it is serving. Here `POST /invocations` is asked `Gateway.refusal()` as soon as its
headers are parsed, and a refused one gets its 503 written in one piece; the body that follows is
skipped by uvicorn's parser as for any request answered before its body was read, and the connection
is kept alive (or closed) as uvicorn would. Everything else is uvicorn's. Measured gateway CPU per
refusal (closed loop at c=32, two runs, alternating): through ASGI 117–123 µs, here 99–110 µs, a bare
uvicorn app answering a fixed 503 81–84 µs. It subclasses uvicorn's protocol (pinned in the lock): the
tests that refuse over keep-alive, pipelined and closing connections say when an upgrade breaks it.
"""

from __future__ import annotations

import time

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from msml.serving.errors import error_parts


def refusing_protocol(gateway) -> type[HttpToolsProtocol]:
    """The protocol class for `gateway` (msml.serving.gateway.Gateway): uvicorn.Config(http=...)."""

    class RefusingProtocol(HttpToolsProtocol):
        def _start_asgi_task(self, cycle: RequestResponseCycle, app) -> None:
            scope = cycle.scope
            if scope["method"] != "POST" or scope["path"] != "/invocations":
                return super()._start_asgi_task(cycle, app)
            start = time.perf_counter()
            if (refused := gateway.refusal()) is None:  # admitted: the app does not ask again (create_app)
                return super()._start_asgi_task(cycle, app)
            gateway.count(refused)
            headers, body = error_parts(refused)
            if not cycle.keep_alive:
                headers.append((b"connection", b"close"))
            head = b"".join(name + b": " + value + b"\r\n" for name, value in [*cycle.default_headers, *headers])
            cycle.transport.write(b"".join((STATUS_LINE[refused.status], head, b"\r\n", body)))
            # what RequestResponseCycle.send does once a response is complete
            cycle.response_started = cycle.response_complete = True
            cycle.message_event.set()
            if not cycle.keep_alive:
                cycle.transport.close()
            cycle.on_response()
            gateway.observe_request("/invocations", refused.status, time.perf_counter() - start)

    return RefusingProtocol
