"""body: the request's JSON body, the operation's own checks (the fields the gateway relies on),
the feature it is for (`X-Gateway-Feature`), and what of it the envelope keeps.

Everything else in the body passes through untouched (see gateway/http/validation.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.http.validation import parse_json_object
from gateway.pipeline.stage import ModelRequest, Stage

if TYPE_CHECKING:
    from gateway.runtime import Gateway

# A feature name is the client's: bounded before it reaches a log, a label or the ledger.
FEATURE_CHARS = 128


class ReadBody(Stage):
    name = "body"
    per_route = False

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway)
        self.keep_request = gateway.settings.storage.envelope_bodies != "none"

    async def before(self, req: ModelRequest) -> None:
        call = req.call
        feature = req.headers.get("x-gateway-feature")
        if feature:
            call.feature = feature[:FEATURE_CHARS]
        raw = await req.inbound.body()
        body = req.body = parse_json_object(raw)
        call.body_bytes = len(raw)
        if self.keep_request:
            call.request_body = raw.decode("utf-8", "replace")
        operation = req.operation
        call.model_requested = operation.validate(body)
        if operation.streams and body.get("stream"):
            req.stream = True
