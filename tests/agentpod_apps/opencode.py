# A stand-in for the OpenCode server (`opencode serve`) with only the standard library: the
# part of its HTTP API the agentpod dialect speaks. POST /session makes a session
# ({id, title}); POST /session/<id>/message answers {info, parts} with the text echoed (and
# the model it was given); any GET answers {path, headers} so the proxy can be checked.
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sessions = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status, value):
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def do_GET(self):
        self.answer(200, {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}})

    def do_POST(self):
        parts = self.path.split("?")[0].strip("/").split("/")
        body = self.body()
        if parts == ["session"]:
            sid = "ses_%d" % (len(sessions) + 1)
            sessions[sid] = {"id": sid, "title": body.get("title"), "messages": 0}
            return self.answer(200, {"id": sid, "title": body.get("title"), "version": "fake"})
        if len(parts) == 3 and parts[0] == "session" and parts[2] == "message":
            s = sessions.get(parts[1])
            if s is None:
                return self.answer(404, {"name": "NotFoundError", "data": {"message": "Session not found: " + parts[1]}})
            s["messages"] += 1
            text = " ".join(p.get("text", "") for p in body.get("parts", []) if p.get("type") == "text")
            return self.answer(200, {
                "info": {"id": "msg_%d" % s["messages"], "sessionID": parts[1], "role": "assistant",
                         "model": body.get("model"), "title": s["title"]},
                "parts": [
                    {"id": "prt_1", "type": "step-start"},
                    {"id": "prt_2", "type": "text", "text": "echo: " + text},
                    {"id": "prt_3", "type": "text", "text": "message %d of %s" % (s["messages"], parts[1])},
                    {"id": "prt_4", "type": "step-finish"},
                ],
            })
        self.answer(404, {"error": "no route " + self.path})

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 4096), Handler).serve_forever()
