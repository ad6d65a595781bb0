"""Snapshots, sleep/wake and git clone against the real server."""

from __future__ import annotations

import pytest

import sandpit
from sandpit import Client, Sandbox


def test_snapshot_list_restore_delete(client: Client, sandbox: Sandbox) -> None:
    sandbox.files.write_text("/workspace/state.txt", "version one")
    snap = sandbox.snapshots.create("before")
    assert snap.id and snap.name == "before" and snap.sandbox_id == sandbox.id
    assert snap.size_bytes > 0 and snap.created_at is not None
    assert snap.id in [s.id for s in sandbox.snapshots.list()]

    assert client.get_snapshot(snap.id).id == snap.id

    sandbox.files.write_text("/workspace/state.txt", "version two")
    sandbox.files.write_text("/workspace/later.txt", "made after the snapshot")
    restored = sandbox.restore()  # "latest" of this sandbox
    assert restored.id == snap.id
    assert sandbox.files.read_text("/workspace/state.txt") == "version one"
    assert not sandbox.files.exists("/workspace/later.txt")

    # A new sandbox can start from it.
    with client.create(restore={"snapshot": snap.id, "from_sandbox": sandbox.id}) as copy:
        assert copy.files.read_text("/workspace/state.txt") == "version one"

    client.delete_snapshot(snap.id)
    assert snap.id not in [s.id for s in sandbox.snapshots.list()]
    with pytest.raises(sandpit.NotFoundError):
        client.delete_snapshot(snap.id)


def test_sleep_and_wake_keep_files(client: Client, sandbox: Sandbox) -> None:
    sandbox.files.write_text("/workspace/kept.txt", "still here")
    slept = sandbox.sleep()
    assert slept.status == "sleeping"
    # The list is not activity (a GET could wake it): it shows the sandbox asleep.
    assert [s.status for s in client.list() if s.id == sandbox.id] == ["sleeping"]
    assert sandbox.wake().status == "running"
    assert sandbox.files.read_text("/workspace/kept.txt") == "still here"
    assert sandbox.exec("echo awake").stdout == "awake\n"


def test_git_clone_from_a_repository_served_inside_the_sandbox(sandbox: Sandbox) -> None:
    # A repository served over git's dumb HTTP protocol on the sandbox's own loopback.
    setup = sandbox.exec(
        "set -e; git init -q -b main /srv/src && cd /srv/src"
        " && echo hello > README && git add README"
        " && git -c user.email=t@t -c user.name=t commit -qm first"
        " && git clone -q --bare /srv/src /srv/www/repo.git && git -C /srv/www/repo.git update-server-info"
    )
    assert setup.ok, setup.stderr
    web = sandbox.processes.start(["python3", "-m", "http.server", "8123", "--bind", "127.0.0.1"], cwd="/srv/www")
    web.wait_port(8123, timeout_ms=30_000)
    url = "http://127.0.0.1:8123/repo.git"
    cloned = sandbox.git_clone(url, branch="main", dir="/workspace/cloned")
    assert (cloned.action, cloned.dir, cloned.branch) == ("clone", "/workspace/cloned", "main")
    assert len(cloned.commit) >= 7
    assert sandbox.files.read_text("/workspace/cloned/README") == "hello\n"
    assert sandbox.exec("git -C /workspace/cloned log --format=%s").stdout == "first\n"
    # Again into the same dir: a pull.
    assert sandbox.git_clone(url, branch="main", dir="/workspace/cloned").action == "pull"
    with pytest.raises(sandpit.BadRequestError):
        sandbox.git_clone("file:///srv/src")
