# Alertmanager's notification receiver for development: prints one JSON line
# per notification (path, status, receiver, each alert's labels) on stdout.
# docker compose runs it as the alert-webhook service (this file mounted;
# `docker compose logs -f alert-webhook`), `make run` natively (its lines are
# shown in the terminal and kept in .run/logs/alert-webhook.log). Replace it
# with a chat bridge for real use: prometheus/alertmanager.yml posts to
# http://alert-webhook:9095/alerts, which deployments replace.
#
#   ALERT_WEBHOOK_HOST  listen address (0.0.0.0: in compose other containers post to it)
#   ALERT_WEBHOOK_PORT  listen port (9095)
# GET / answers "ok" (the healthcheck). Python standard library only, so the
# stock python image runs it.
import http.server
import json
import os


class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            doc = json.loads(body)
            line = {
                "status": doc.get("status"),
                "receiver": doc.get("receiver"),
                "alerts": [a.get("labels", {}) for a in doc.get("alerts", [])],
            }
        except ValueError:
            line = {"raw": body.decode("utf-8", "replace")}
        print(json.dumps({"path": self.path, **line}), flush=True)
        self.send_response(200)
        self.end_headers()

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass  # one line per notification, nothing else


if __name__ == "__main__":
    address = (
        # All interfaces by default: in compose, Alertmanager posts from another container.
        os.environ.get("ALERT_WEBHOOK_HOST", "0.0.0.0"),  # noqa: S104
        int(os.environ.get("ALERT_WEBHOOK_PORT", "9095")),
    )
    http.server.ThreadingHTTPServer(address, Sink).serve_forever()
