"""A bounded, seeded fuzz run against ``lge-node serve`` over real sockets: mutated
A-ASSOCIATE-RQ and P-DATA PDUs, then mutated datasets inside a valid association. The
node must stay alive and responsive, its memory bounded, and every Success it gave must
be an instance in its index (nothing acknowledged is lost). Same seed, same inputs."""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path

import pytest

from tests.node_harness import NodeProcess, echoscu
from tests.test_node_hostile import NO_WORKERS, _associate_rq, _echo_from, _send_raw, _status

pytestmark = pytest.mark.timeout(300)

SEED = 20261123
PDU_CASES = 200
DATASET_CASES = 40


def _p_data_echo() -> bytes:
    """A P-DATA-TF carrying a C-ECHO-RQ command set (context 1, last fragment)."""
    from pynetdicom.dimse_messages import C_ECHO_RQ
    from pynetdicom.dimse_primitives import C_ECHO

    primitive = C_ECHO()
    primitive.MessageID = 1
    primitive.AffectedSOPClassUID = "1.2.840.10008.1.1"
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    from pynetdicom.pdu import P_DATA_TF

    pdu = P_DATA_TF()
    pdu.from_primitive(next(message.encode_msg(1, 16382)))
    return bytes(pdu.encode())


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and b:  # flip bytes
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and b:  # truncate
            del b[rng.randrange(len(b)) :]
        elif op == 2:  # insert junk
            at = rng.randrange(len(b) + 1)
            b[at:at] = rng.randbytes(rng.randint(1, 64))
        elif op == 3 and len(b) >= 6:  # lie about the PDU length
            b[2:6] = rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, len(b) * 4]).to_bytes(4, "big")
        elif op == 4 and b:  # another PDU type
            b[0] = rng.randrange(256)
        elif op == 5 and len(b) > 8:  # duplicate a slice
            i = rng.randrange(len(b) - 4)
            b[i:i] = b[i : i + rng.randint(1, 32)]
    return bytes(b)


def test_seeded_fuzz_leaves_the_node_alive_bounded_and_lossless(
    tmp_path: Path, psir_classic
) -> None:
    import pydicom

    rng = random.Random(SEED)
    dicom = {"negotiation_timeout_s": 2, "network_timeout_s": 3}
    node = NodeProcess(tmp_path / "node", wait_models=False, jobs=NO_WORKERS, dicom=dicom)
    valid_rq, echo = _associate_rq(), _p_data_echo()
    with node:
        assert node.proc is not None
        rss_start = _status(node.proc.pid, "VmRSS")
        for i in range(PDU_CASES):
            first = _mutate(rng, valid_rq) if rng.random() < 0.7 else valid_rq
            then = _mutate(rng, echo) if rng.random() < 0.8 else echo
            with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
                try:
                    s.sendall(first)
                    if rng.random() < 0.6:
                        s.sendall(then)
                    s.settimeout(0.05)
                    s.recv(4096)
                except OSError:
                    pass  # the node closed it or answered: both fine
            if i % 100 == 99:
                # from another address: the fuzzer's own may be at its connection share
                assert node.alive() and _echo_from(node.port, "127.0.0.2"), f"after case {i}"

        # mutated datasets inside a valid association: a failure status or Success,
        # and every Success is an instance in the index
        work = tmp_path / "mutated"
        work.mkdir()
        sources = [p.read_bytes() for p in psir_classic.files]
        files = []
        for k in range(DATASET_CASES):
            data = bytearray(rng.choice(sources))
            for _ in range(rng.randint(1, 6)):
                at = rng.randrange(132, len(data))  # keep preamble/"DICM", mutate the rest
                data[at] = rng.randrange(256)
            if rng.random() < 0.3:
                del data[rng.randrange(200, len(data)) :]
            path = work / f"m{k:03d}.dcm"
            path.write_bytes(bytes(data))
            files.append(path)
        readable = []
        for path in files:  # pynetdicom must be able to read the file meta to send it
            try:
                pydicom.dcmread(path, stop_before_pixels=True)
                readable.append(path)
            except Exception:
                continue
        statuses: list[int | None] = []
        for chunk in range(0, len(readable), 10):
            try:
                statuses += _send_raw(node.port, readable[chunk : chunk + 10])
            except Exception:  # the send itself failed on the client side: fine
                statuses += [None] * len(readable[chunk : chunk + 10])
        ok = [p for p, s in zip(readable, statuses, strict=True) if s == 0x0000]
        sops = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in ok}
        node.wait_for(
            lambda: {r[0] for r in node.query("SELECT sop_uid FROM instances")} >= sops
            or None, 60, "every acknowledged instance indexed",
        )  # fmt: skip
        time.sleep(4)  # let cut-off connections reach their deadlines
        assert node.alive() and echoscu(node.port).returncode == 0
        assert not list(node.data_dir.rglob("*.tmp"))
        rss_end = _status(node.proc.pid, "VmRSS")
        assert rss_end - rss_start < 150_000, (rss_start, rss_end)  # kB
