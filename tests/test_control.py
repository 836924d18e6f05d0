"""The control socket under hostile clients: silent, huge, foreign, and too late."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from guards import guard

from governor.service._control import REQUEST_DEADLINE, ControlServer, ask

GUARD = guard(30)


class Answers:
    """What the server was asked to do, and a reply for each."""

    def __init__(self) -> None:
        self.acted: list[dict[str, Any]] = []

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        self.acted.append(request)
        return {"ok": True, "op": request.get("op")}


@pytest.fixture
def control(tmp_path: Path) -> Iterator[tuple[ControlServer, Answers]]:
    answers = Answers()
    server = ControlServer(tmp_path / "g.db", answers, max_request=4096, deadline=REQUEST_DEADLINE)
    server.open()
    try:
        yield server, answers
    finally:
        server.close()


def test_a_silent_client_does_not_jam_the_others(control: tuple[ControlServer, Answers]) -> None:
    server, answers = control
    silent = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(5)]
    try:
        for client in silent:
            client.connect(str(server.path))
            client.sendall(b'{"op":')  # and never the rest
        # Answered while the silent ones still hold their connections (well inside their deadline).
        assert ask(server.path, {"op": "status"}, timeout=GUARD)["ok"] is True
        assert [request["op"] for request in answers.acted] == ["status"]
    finally:
        for client in silent:
            client.close()


def test_a_silent_client_is_cut_off_at_the_deadline(tmp_path: Path) -> None:
    server = ControlServer(tmp_path / "g.db", Answers(), deadline=0.2)
    server.open()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(GUARD)
            client.connect(str(server.path))
            client.sendall(b'{"op":')
            reply = json.loads(client.makefile().readline())
        assert reply == {"ok": False, "error": "the request was not complete within 0.2s"}
    finally:
        server.close()


def test_an_oversized_request_is_refused_unread(control: tuple[ControlServer, Answers]) -> None:
    server, answers = control
    reply = ask(server.path, {"op": "fire", "payload": "x" * 10_000}, timeout=GUARD)
    assert reply["ok"] is False and "larger than 4096 bytes" in reply["error"]
    assert answers.acted == []


def test_a_request_its_client_stopped_waiting_for_is_not_acted_on(
    control: tuple[ControlServer, Answers],
) -> None:
    server, answers = control
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(GUARD)
        client.connect(str(server.path))
        late = {"op": "fire", "event": "poke", "deadline": time.time() - 1}
        client.sendall(json.dumps(late).encode() + b"\n")
        reply = json.loads(client.makefile().readline())
    assert reply["ok"] is False and "nothing was done" in reply["error"]
    assert answers.acted == []


def test_only_the_servers_own_user_is_answered(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another user")
    # An operator's mistake: a directory and a socket that no longer keep strangers out.
    where = Path(tempfile.mkdtemp(prefix="governor-control-"))
    where.chmod(0o755)
    answers = Answers()
    server = ControlServer(where / "g.db", answers)
    server.open()
    os.chmod(server.path, 0o666)
    try:
        reply = _ask_as_nobody(server.path)
    finally:
        server.close()
        shutil.rmtree(where)
    assert reply == {"ok": False, "error": "uid 65534 may not control this server"}
    assert answers.acted == []


def _ask_as_nobody(path: Path) -> dict[str, Any]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a stranger: uid nobody
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            reply = ask(path, {"op": "fire", "event": "poke"}, timeout=GUARD)
            os.write(write, json.dumps(reply).encode())
        except BaseException as error:
            os.write(write, json.dumps({"raised": repr(error)}).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        reply = json.loads(pipe.read())
    os.waitpid(pid, 0)
    return reply


def test_many_clients_at_once_are_all_answered(control: tuple[ControlServer, Answers]) -> None:
    server, answers = control
    replies: list[dict[str, Any]] = []

    def client() -> None:
        replies.append(ask(server.path, {"op": "status"}, timeout=GUARD))

    threads = [threading.Thread(target=client) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GUARD)
    assert len(replies) == 20 and all(reply["ok"] for reply in replies)
    assert len(answers.acted) == 20
