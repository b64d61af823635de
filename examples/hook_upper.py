#!/usr/bin/env python3
"""An example --hook for capagent: upper-cases every message relayed.

    capagent proxy forward --listen 127.0.0.1:4444 --to 127.0.0.1:7 \
        --hook 'python3 examples/hook_upper.py'

capagent starts this program once and writes one JSON line per message to its stdin:

    {"id": 1, "conn": 3, "dir": "c2s", "kind": "raw",
     "client": "127.0.0.1:40112", "target": "127.0.0.1:7", "data": "aGVsbG8K"}

  id      the message's number: the answer must carry it (answers may come in any order)
  conn    the connection (the "fd" of its records)
  dir     "c2s" (client to server) or "s2c" (server to client)
  kind    "raw" (a chunk of a relayed stream), "head" (an HTTP request or response head)
          or "body" (a piece of an HTTP body, without chunked framing)
  client, target   the endpoints ("target" as the client asked for it, once known)
  data    the bytes, in base64

and reads one JSON line per message from its stdout:

    {"id": 1, "action": "pass"}                        send the bytes unchanged
    {"id": 1, "action": "replace", "data": "SEVMTE8K"} send these bytes instead
    {"id": 1, "action": "drop"}                        send nothing
    {"id": 1, "action": "close"}                       end the connection

Flush each answer: capagent waits for it (--hook-timeout, 1000 ms by default, then the
message passes unchanged). Log to stderr, never to stdout.
"""

import base64
import json
import sys

for line in sys.stdin:
    msg = json.loads(line)
    data = base64.b64decode(msg["data"])
    if msg["kind"] == "head":
        # HTTP heads: leave them alone (upper-casing "HTTP/1.1" would break them).
        answer = {"id": msg["id"], "action": "pass"}
    else:
        answer = {
            "id": msg["id"],
            "action": "replace",
            "data": base64.b64encode(data.upper()).decode(),
        }
    print(json.dumps(answer), flush=True)
