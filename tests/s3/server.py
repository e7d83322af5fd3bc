"""A local S3-protocol server for the tests: moto's, one request at a time.

moto checks a conditional put (`If-None-Match: *`) and then stores the object
in two steps; served from several threads at once, two writers racing for the
same Delta commit file could both succeed. Serving one request at a time makes
each put atomic, as S3's own conditional writes are, so the tests of several
writers exercise delta-rs's commit protocol, not a race in the test server.

    python tests/s3/server.py PORT   (scripts/s3-server.sh starts it)
"""
import sys
import threading

from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple


def one_at_a_time(app):
    lock = threading.Lock()

    def serve(environ, start_response):
        with lock:
            # The body is produced under the lock too: it may read the store.
            return list(app(environ, start_response))

    return serve


def main():
    port = int(sys.argv[1])
    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", port, one_at_a_time(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
