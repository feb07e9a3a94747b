"""uvicorn's HTTP/1.1 protocol (h11) with two changes for a server that faces hostile clients:

* a request that is not HTTP at all gets a 400 in OpenAI's error shape, as every other refusal, not plain text;
* a connection must send a request's head within HEAD_TIMEOUT_S of opening (or of its last answer): uvicorn waits
  for a head that trickles in, or never comes, without end, so slow clients could hold every connection.
  (A body that trickles in is the app's business: it must arrive within --request-timeout.)
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol as _H11Protocol

from edge_vlm.serve.errors import APIError

HEAD_TIMEOUT_S = 10.0


class H11Protocol(_H11Protocol):
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._expect_head()

    def on_response_complete(self) -> None:
        self._expect_head()  # before uvicorn starts on a pipelined request, which then counts as arrived
        super().on_response_complete()

    def _expect_head(self) -> None:
        waiting_after = self.cycle  # a request whose head is complete replaces the cycle
        self.loop.call_later(HEAD_TIMEOUT_S, self._head_deadline, waiting_after)

    def _head_deadline(self, waiting_after) -> None:
        if self.cycle is waiting_after and not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        body = json.dumps(APIError(400, f"malformed HTTP request: {msg}", code="invalid_http").body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()
