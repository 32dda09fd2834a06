"""EmbeddedStack's refusals before it starts anything (missing checkpoint, busy port, a var dir another
stack holds) and its recovery of jobs an earlier session left unfinished. No servers start here."""

from __future__ import annotations

import fcntl
import socket
from pathlib import Path

import pytest

from goha import cli
from services.embedded.stack import (
    CHECKPOINT_MISSING,
    PORT_IN_USE,
    STACK_ALREADY_RUNNING,
    EmbeddedStack,
    EmbeddedStackError,
    recover_jobs,
)
from shared.platform.db import Database
from shared.platform.jobs import JobState, transition
from shared.platform.migrate import upgrade
from shared.platform.models import Job
from shared.platform.settings import Settings
from tests.support.factories import make_job_for_tests


def test_missing_checkpoint_is_a_typed_error_and_the_cli_prints_it(tmp_path: Path, capsys) -> None:
    with pytest.raises(EmbeddedStackError) as missing:
        EmbeddedStack(tmp_path / "var", checkpoint=tmp_path / "nope.pt").start()
    assert missing.value.code == CHECKPOINT_MISSING and "nope.pt" in missing.value.message
    assert not (tmp_path / "var").exists()  # nothing was created

    code = cli.main(["up", "--var-dir", str(tmp_path / "var"), "--checkpoint", str(tmp_path / "nope.pt")])
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: [checkpoint_missing] ")


def test_busy_port_is_refused(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"x")  # never read: the port check comes first
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EmbeddedStackError) as busy:
            EmbeddedStack(tmp_path / "var", checkpoint=checkpoint, port=port).start()
    assert busy.value.code == PORT_IN_USE


def test_a_var_dir_held_by_another_stack_is_left_alone(tmp_path: Path) -> None:
    var_dir = tmp_path / "var"
    (var_dir / "run").mkdir(parents=True)
    (var_dir / "embedded.env").write_text("export GOHA_API_KEY=the-other-stacks-key\n")
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"x")
    with open(var_dir / "stack.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(EmbeddedStackError) as locked:
            EmbeddedStack(var_dir, checkpoint=checkpoint).start()
    assert locked.value.code == STACK_ALREADY_RUNNING
    # The running stack's files survive the refused start.
    assert (var_dir / "embedded.env").read_text().endswith("the-other-stacks-key\n")
    assert (var_dir / "run").is_dir()


def test_recover_jobs_hands_back_running_jobs_and_publishes_them(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var", embedded=True, queue_name="goha-recover-test")
    settings.var_dir.mkdir(parents=True)
    upgrade(settings.database_url)
    database = Database(settings.database_url)
    try:
        with database.session() as session:
            interrupted = make_job_for_tests(session)
            transition(session, interrupted, JobState.RUNNING, reason="a worker claimed it")
            waiting = make_job_for_tests(session)  # queued and freshly published: left alone
            interrupted_id, waiting_id = interrupted.id, waiting.id

        assert recover_jobs(settings, hand_back_running=False) == []
        assert recover_jobs(settings, hand_back_running=True) == [interrupted_id]

        with database.session() as session:
            job = session.get(Job, interrupted_id)
            assert job.state == "queued" and job.enqueued_at is not None
            assert session.get(Job, waiting_id).state == "queued"
    finally:
        database.dispose()
    messages = list((settings.broker_folder / "queue").glob("*"))
    assert len(messages) == 1 and interrupted_id in messages[0].read_text()
