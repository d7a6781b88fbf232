"""OHIF on loopback for the browser tests: the prebuilt dist/ with an index.html fallback,
an app-config.js that points at Orthanc's DICOMweb, and /dicom-web proxied to Orthanc on
the same origin (Orthanc sends no CORS headers). Plus headless Debian chromium.
"""

from __future__ import annotations

import http.client
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from node.demo.peers import free_port

ROOT = Path(__file__).resolve().parent.parent
OHIF_VERSION = "3.13.2"
OHIF_DIST = ROOT / ".cache" / f"ohif-{OHIF_VERSION}" / "dist"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

ORTHANC_DICOMWEB = {
    "Plugins": [str(DICOMWEB_PLUGIN)],
    "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
}

APP_CONFIG = """window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: false,
  showErrorDetails: 'always',
  defaultDataSourceName: 'orthanc',
  investigationalUseDialog: { option: 'never' },
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc on loopback',
        name: 'orthanc',
        wadoUriRoot: '%(origin)s/dicom-web',
        qidoRoot: '%(origin)s/dicom-web',
        wadoRoot: '%(origin)s/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
"""

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--no-sandbox"]


def viewer_available() -> str | None:
    """None when everything the browser test needs is installed, else what is missing."""
    if not (OHIF_DIST / "index.html").is_file():
        return f"OHIF {OHIF_VERSION} is not in {OHIF_DIST} (scripts/fetch-ohif)"
    if not DICOMWEB_PLUGIN.is_file():
        return "orthanc-dicomweb is not installed (scripts/setup-system)"
    if not Path(CHROMIUM).is_file():
        return "chromium is not installed (scripts/setup-system)"
    return None


class OhifServer:
    """``with OhifServer(orthanc_url) as viewer: page.goto(viewer.study_url(uid))``; any
    DICOMweb server will do as upstream (lge-node's own, with a token in ``headers``)."""

    def __init__(
        self, orthanc_url: str, dist: Path = OHIF_DIST, headers: dict[str, str] | None = None
    ) -> None:
        self.dist = dist
        self.headers = headers or {}  # added to proxied requests (a token for lge-node)
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.upstream = urlsplit(orthanc_url)
        self.requests: list[tuple[str, int]] = []  # (path, status) of proxied requests
        self._server: ThreadingHTTPServer | None = None

    def study_url(self, study_uid: str) -> str:
        return f"{self.origin}/viewer?StudyInstanceUIDs={study_uid}"

    def __enter__(self) -> OhifServer:
        handler = _handler(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _handler(viewer: OhifServer) -> type[BaseHTTPRequestHandler]:
    config = (APP_CONFIG % {"origin": viewer.origin}).encode()
    types = {
        ".js": "application/javascript",
        ".css": "text/css",
        ".html": "text/html",
        ".json": "application/json",
        ".wasm": "application/wasm",
        ".svg": "image/svg+xml",
        ".woff2": "font/woff2",
        ".png": "image/png",
        ".ico": "image/x-icon",
    }

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            return

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path.startswith("/dicom-web/"):
                self._proxy()
            elif path == "/app-config.js":
                self._send(200, config, "application/javascript")
            else:
                self._static(path)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _static(self, path: str) -> None:
            target = (viewer.dist / path.lstrip("/")).resolve()
            if not target.is_relative_to(viewer.dist.resolve()) or not target.is_file():
                # A client-side route (/viewer, /segmentation...): the app handles it.
                target = viewer.dist / "index.html"
            body = target.read_bytes()
            self._send(200, body, types.get(target.suffix, "application/octet-stream"))

        def _proxy(self) -> None:
            up = viewer.upstream
            conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() in {"accept", "range"}}
            # Orthanc writes BulkDataURIs with the Host it was asked on: keep it ours.
            headers["Host"] = self.headers.get("Host", f"127.0.0.1:{viewer.port}")
            headers.update(viewer.headers)
            conn.request("GET", self.path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            viewer.requests.append((self.path, resp.status))
            self.send_response(resp.status)
            for key in ("Content-Type", "Content-Range", "Accept-Ranges"):
                if resp.getheader(key):
                    self.send_header(key, resp.getheader(key))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            conn.close()

    return Handler
