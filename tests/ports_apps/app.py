# A test web app for the port proxy: files from the current directory, plus
#   ANY /echo...   answers the request body, with X-Method and X-Path (path and query)
#   GET /headers   answers {"path", "headers"} as JSON
#   GET /stream    a line, then another once the file `go` exists
import json
import os
import sys
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def echo(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Method", self.command)
        self.send_header("X-Path", self.path)
        self.send_header("Set-Cookie", "app=1; Path=/")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/headers"):
            body = json.dumps({"path": self.path, "headers": [[k.lower(), v] for k, v in self.headers.items()]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path.startswith("/echo"):
            self.echo()
        elif self.path.startswith("/stream"):
            # One line now, the next once the file `go` exists: the body must stream.
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            self.wfile.write(b"first\n")
            self.wfile.flush()
            while not os.path.exists("go"):
                time.sleep(0.05)
            self.wfile.write(b"second\n")
        else:
            super().do_GET()

    do_POST = do_PUT = do_DELETE = do_PATCH = echo


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
