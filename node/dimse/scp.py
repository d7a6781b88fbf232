"""The node's DICOM service: one pynetdicom AE with its presentation contexts, access
control and optional TLS, and the handlers of the Verification, Storage
(`node.dimse.store_scp`) and Query/Retrieve (`node.dimse.qr_scp`) SCPs registered on it
(the wiring / handlers split of pynetdicom's own ``apps/qrscp``)."""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from node.config import Config
from node.dimse.common import MR_TRANSFER_SYNTAXES, NO_DELAY, Dimse, Peer, peer_of
from node.dimse.guard import GuardedServer, Limits
from node.dimse.qr_scp import QueryRetrieveScp
from node.dimse.store_scp import StoreScp
from node.events import Event, notify
from node.logs import event
from node.metrics import ASSOCIATIONS
from node.store.intake import Intake
from node.store.repository import Repository
from node.workflow.selector import MR_CLASSES

log = logging.getLogger("node.dimse")


def _lenient_uid(value: str) -> tuple[bool, str]:
    """pynetdicom's UI validator for the DIMSE layer. Its own rejects a UID over 64
    characters while decoding the command, which aborts the whole association; this one
    lets the message through so that the storage layer (`node.store.storage.check_uid`)
    refuses that one instance with a failure status and a reason."""
    if len(value) > 1024 or not value.isprintable():
        return False, "not a printable value of at most 1024 characters"
    return True, ""


def access_warning(config: Config) -> str | None:
    """What an operator must be told about an open configuration (start-up, status)."""
    access = config.access
    if access.allowed_peers:
        return None
    if access.open_query_retrieve:
        return (
            "access.allowed_peers is empty and access.open_query_retrieve is true: ANY "
            "calling AE may store, query and retrieve every study, patient names included"
        )
    return (
        "access.allowed_peers is empty: any calling AE may store; query/retrieve is "
        "refused to all (list the peers in [access])"
    )


QR_CLASSES = [
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
]


class DicomService:
    """Owns the AE; `start` returns once the port is listening."""

    def __init__(
        self,
        config: Config,
        repository: Repository,
        intake: Intake,
    ) -> None:
        self.config = config
        self.repository = repository
        self.store = StoreScp(config, intake)
        self.qr = QueryRetrieveScp(config, repository)
        self.ae = self._build_ae()
        self.server: GuardedServer | None = None

    # -- set-up ------------------------------------------------------------------------

    def _build_ae(self) -> AE:
        cfg = self.config.dicom
        _config.VALIDATORS["UI"] = _lenient_uid
        ae = AE(ae_title=cfg.ae_title)
        # pynetdicom counts every open connection as an association, so its limit is the
        # connection budget; dicom.max_associations (established ones) is checked when
        # an association is requested (`_on_requested`).
        ae.maximum_associations = cfg.max_connections
        ae.network_timeout = cfg.network_timeout_s
        # The ACSE timeout is pynetdicom's ARTIM timer: a connection that sends no
        # A-ASSOCIATE-RQ at all is closed after it (the guard cuts slow ones).
        ae.acse_timeout = cfg.negotiation_timeout_s
        ae.dimse_timeout = cfg.network_timeout_s
        ae.maximum_pdu_size = cfg.max_pdu_bytes
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for cx in AllStoragePresentationContexts:
            uid = str(cx.abstract_syntax)
            syntaxes = MR_TRANSFER_SYNTAXES if uid in MR_CLASSES else ALL_TRANSFER_SYNTAXES
            # both roles: we store what peers send, and send what a C-GET asks for
            ae.add_supported_context(uid, syntaxes, scu_role=True, scp_role=True)
        for sop in QR_CLASSES:
            ae.add_supported_context(sop, ALL_TRANSFER_SYNTAXES[:4])
        return ae

    def ssl_context(self) -> ssl.SSLContext | None:
        tls = self.config.tls
        if not tls.enabled:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        assert tls.certificate and tls.private_key
        ctx.load_cert_chain(str(tls.certificate), str(tls.private_key))
        if tls.ca_certificates:
            ctx.load_verify_locations(str(tls.ca_certificates))
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_NONE
        return ctx

    def start(self) -> None:
        cfg = self.config.dicom
        handlers = [
            NO_DELAY,
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self.store.on_store),
            (evt.EVT_C_FIND, self.qr.on_find),
            (evt.EVT_C_MOVE, self.qr.on_move),
            (evt.EVT_C_GET, self.qr.on_get),
        ]
        # start_server's non-blocking path, with the guarded server class
        server = self.ae.make_server(
            (cfg.bind_address, cfg.port),
            ssl_context=self.ssl_context(),
            evt_handlers=handlers,
            server_class=GuardedServer,
        )
        server.configure(
            Limits(
                max_connections=cfg.max_connections,
                max_connections_per_address=cfg.max_connections_per_address,
                negotiation_timeout_s=cfg.negotiation_timeout_s,
                network_timeout_s=cfg.network_timeout_s,
                max_pdu_bytes=cfg.max_pdu_bytes,
            ),
            self._on_transport_violation,
        )
        threading.Thread(target=server.serve_forever, name="dicom-acceptor", daemon=True).start()
        self.ae._servers.append(server)  # so that ae.shutdown() stops it too
        self.server = server
        event(
            log, "listening", ae_title=cfg.ae_title, address=cfg.bind_address, port=cfg.port,
            tls=self.config.tls.enabled,
        )  # fmt: skip
        warning = access_warning(self.config)
        if warning:
            event(log, "access_open", logging.WARNING, reason=warning)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        event(log, "stopped")

    # -- associations ------------------------------------------------------------------

    def allowed(self, peer: Peer, called: str | None = None) -> str | None:
        """None if the peer may associate, else the reason it may not."""
        cfg = self.config.dicom
        if called is not None and cfg.check_called_ae:
            ours = {cfg.ae_title, *([cfg.force_ae_title] if cfg.force_ae_title else [])}
            if called not in ours:
                return f"called AE title {called!r} is not this node ({', '.join(sorted(ours))})"
        allowed = self.config.access.allowed_peers
        if not allowed:
            return None
        titles = [p for p in allowed if p.ae_title == peer.ae_title]
        if not titles:
            return f"calling AE title {peer.ae_title!r} is not in access.allowed_peers"
        if all(p.address is not None and p.address != peer.address for p in titles):
            return f"calling AE title {peer.ae_title!r} is not allowed from {peer.address}"
        return None

    def _on_transport_violation(self, address: str, reason: str) -> None:
        notify(self.repository, Event.CONNECTION_DROPPED, reason, address=address, defer=True)

    def _on_requested(self, ev: Any) -> None:
        calling = str(ev.assoc.requestor.primitive.calling_ae_title).strip()
        called = str(ev.assoc.requestor.primitive.called_ae_title).strip()
        peer = Peer(calling, str(ev.assoc.requestor.address))
        reason = self.allowed(peer, called)
        if reason is None:
            established = sum(1 for a in self.ae.active_associations if a.is_established)
            if established < self.config.dicom.max_associations:
                return
            # rejected-transient, service-provider (presentation), local-limit-exceeded
            ev.assoc.acse.send_reject(0x02, 0x03, 0x02)
            ev.assoc.is_rejected = True
            ev.assoc.kill()
            notify(
                self.repository, Event.ASSOCIATION_REJECTED,
                f"{established} associations established, dicom.max_associations reached",
                peer_ae=peer.ae_title, address=peer.address, defer=True,
            )  # fmt: skip
            return
        # Reject first, from configuration alone; the index is only told (deferred: a
        # locked or unreachable database must neither delay nor decide the answer).
        # rejected-permanent, service-user, called- or calling-AE-title-not-recognized
        ev.assoc.acse.send_reject(0x01, 0x01, 0x07 if reason.startswith("called") else 0x03)
        ev.assoc.is_rejected = True
        ev.assoc.kill()
        ASSOCIATIONS.labels("rejected").inc()
        notify(
            self.repository, Event.ASSOCIATION_REJECTED, reason, peer_ae=peer.ae_title,
            address=peer.address, defer=True,
        )  # fmt: skip

    def _on_established(self, ev: Any) -> None:
        peer = peer_of(ev.assoc)
        event(log, "association_accepted", peer_ae=peer.ae_title, address=peer.address)
        ASSOCIATIONS.labels("accepted").inc()

    def _finish(self, ev: Any, how: str) -> None:
        peer = peer_of(ev.assoc)
        stored = self.store.stored_in(ev.assoc)
        level = logging.INFO if how == "released" else logging.WARNING
        event(log, f"association_{how}", level, peer_ae=peer.ae_title, stored=stored)

    def _on_released(self, ev: Any) -> None:
        self._finish(ev, "released")

    def _on_aborted(self, ev: Any) -> None:
        self._finish(ev, "aborted")

    def _on_conn_close(self, ev: Any) -> None:
        assoc = ev.assoc
        if assoc.is_established or assoc.is_released or assoc.is_rejected:
            return
        # Closed before any association was agreed: garbage bytes, a port scanner, or a
        # peer that gave up. Recorded, because an operator debugging routing wants it.
        reason = "connection closed before a valid association (not DICOM, or aborted)"
        notify(
            self.repository, Event.CONNECTION_DROPPED, reason,
            address=str(assoc.requestor.address or ""), defer=True,
        )  # fmt: skip

    def _on_echo(self, ev: Any) -> int:
        peer = peer_of(ev.assoc)
        event(log, "echo", peer_ae=peer.ae_title, address=peer.address)
        return Dimse.SUCCESS
