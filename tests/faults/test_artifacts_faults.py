"""Artifact faults in real training cycles (small CPU settings, `SMALL`):
a full artifacts disk fails the run cleanly and the next run succeeds once there is space; a crash between
the artifact's rename and its registry row does not block the next training."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy.engine import Engine

from adapters import artifacts
from daemon.settings import Settings
from daemon.training.trainer_process import TrainerProcess
from storage import registry
from storage.db import session_scope
from tests.faults import train_targets
from tests.faults.conftest import SMALL

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.integration, pytest.mark.postgres,
              pytest.mark.timeout(900)]


def test_full_artifacts_disk_fails_cleanly_and_the_next_run_succeeds(
    stocked: Engine, pg_url: str, training_settings: Callable[..., Settings],
) -> None:
    settings = training_settings(pg_url, **SMALL)
    root = settings.storage.artifacts_dir
    full = TrainerProcess(settings, stocked, target=train_targets.disk_full).run("manual")
    assert full.status == "failed" and full.candidate_version is None
    assert "File too large" in (full.error or "") or "No space" in (full.error or ""), full.error
    with session_scope(stocked) as s:
        assert registry.list_versions(session=s) == []  # nothing registered
        run = registry.recent_runs(session=s, limit=1)[0]
        assert run.status == "failed" and run.error  # the run row is closed, with the reason
        assert registry.champion(session=s) == "base"  # the champion is untouched
    assert not [p.name for p in root.iterdir()] if root.exists() else True  # no half-written folder left

    again = TrainerProcess(settings, stocked).run("manual")  # space again
    assert again.status == "succeeded", again.error
    with session_scope(stocked) as s:
        row = registry.get_version(session=s, version=again.candidate_version or "")
    assert artifacts.load_adapter(root, row.version, expected_checksum=row.checksum).state


def test_a_crash_between_artifact_rename_and_registry_insert_does_not_block_the_next_training(
    stocked: Engine, pg_url: str, training_settings: Callable[..., Settings],
) -> None:
    settings = training_settings(pg_url, **SMALL)
    root = settings.storage.artifacts_dir
    with session_scope(stocked) as s:
        orphan = registry.next_version_name(session=s)
    # what the crash leaves: the renamed folder of the next version, and no registry row for it
    (root / orphan).mkdir(parents=True)
    (root / orphan / "adapter_model.safetensors").write_bytes(b"renamed, never registered")
    outcome = TrainerProcess(settings, stocked).run("manual")
    assert outcome.status == "succeeded", outcome.error
    with session_scope(stocked) as s:
        row = registry.get_version(session=s, version=outcome.candidate_version or "")
    assert artifacts.load_adapter(root, row.version, expected_checksum=row.checksum).state
