"""An MCP server over stdio that speaks the wire format (JSON-RPC 2.0, a message a line) by hand, so that it can
misbehave exactly as a test asks (argv[1]): `pages` lists its tools in pages and then gives a page again, `rpcerror`
answers a call of "fail" with a JSON-RPC error of its own, `garbage` writes a line that is no JSON before each
answer, `nan` answers NaN, `exit` says why on stderr and exits when asked to initialize. Otherwise it echoes.
"""

import json
import sys

MODE = sys.argv[1] if len(sys.argv) > 1 else ""
TOOL = {"name": "echo", "description": "Say the text back.",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}


def send(message: dict) -> None:
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    message = json.loads(line)
    if "id" not in message:  # a notification
        continue
    method, params, key = message["method"], message.get("params") or {}, message["id"]
    if method == "initialize":
        if MODE == "exit":
            sys.stderr.write("cannot start: no configuration file\n")
            sys.exit(3)
        send({"id": key, "result": {"protocolVersion": params["protocolVersion"], "capabilities": {"tools": {}},
                                    "serverInfo": {"name": "raw", "version": "1"}}})
    elif method == "tools/list":
        if MODE == "pages":  # a first page, then a second that names itself as the next
            tools = [dict(TOOL, name="second")] if params.get("cursor") else [TOOL]
            send({"id": key, "result": {"tools": tools, "nextCursor": "page-2"}})
        else:
            send({"id": key, "result": {"tools": [TOOL]}})
    elif method == "tools/call":
        text = params["arguments"]["text"]
        if MODE == "garbage":
            print("starting the echo...", flush=True)
        if MODE == "rpcerror" and text == "fail":
            send({"id": key, "error": {"code": -32000, "message": "the echo chamber is full"}})
        elif MODE == "nan":
            sys.stdout.write(f'{{"jsonrpc": "2.0", "id": {json.dumps(key)}, "result": {{"content": [], '
                             f'"structuredContent": {{"loudness": NaN}}}}}}\n')
            sys.stdout.flush()
        else:
            send({"id": key, "result": {"content": [{"type": "text", "text": text}], "isError": False}})
    else:
        send({"id": key, "error": {"code": -32601, "message": f"no method {method}"}})
