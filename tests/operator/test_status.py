"""The pure state machine (peftjob_operator.status): observed pods + current status + now -> next status and
effects. No operator, no API server: each case is a table row of what a kubelet would report."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import kopf
import pytest

from peftjob_operator.status import (
    format_duration,
    parse_progress,
    parse_result,
    reconcile,
    refused_spec_changes,
    reject,
    time_check_due,
)
from peftjob_trainer.api import PEFTJob, PEFTJobStatus, load_object
from peftjob_trainer.api.result import ProgressReport, TrainerResult
from peftjob_trainer.api.status import MlflowRun
from peftjob_trainer.result_file import TERMINATION_MESSAGE_LIMIT, error_result, write_result

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def job(replicas: int = 2, **run_policy: Any) -> PEFTJob:
    return load_object({
        "apiVersion": "peft.dev/v1alpha1", "kind": "PEFTJob",
        "metadata": {"name": "j", "namespace": "ml", "uid": "u-1"},
        "spec": {"model": {"source": "gpt2"}, "method": {"lora": {"r": 4}},
                 "data": {"train": {"source": "s3://d/train.jsonl"}},
                 "workers": {"replicas": replicas}, "runPolicy": run_policy},
    })


def pod(index: int, phase: str, exit_code: int | None = None, message: str = "", reason: str = "",
        terminating: bool = False) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if reason:
        status["reason"] = reason
    if exit_code is not None:
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": {
            "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error", "message": message}}}]
    metadata: dict[str, Any] = {"name": f"j-worker-{index}"}
    if terminating:
        metadata["deletionTimestamp"] = "2026-01-02T03:04:00Z"
    return {"metadata": metadata, "status": status}


def running(restarts: int = 0, started: datetime = NOW) -> PEFTJobStatus:
    """The status of a gang whose pods were created at `started` and all run."""
    status = reconcile(job(), PEFTJobStatus(), [], started).status
    status = reconcile(job(), status, [pod(0, "Running"), pod(1, "Running")], started).status
    assert status.phase == "Running"
    return status.model_copy(update={"restarts": restarts})


def condition(status: PEFTJobStatus, type_: str) -> Any:
    return next(c for c in status.conditions if c.type == type_)


def test_a_new_job_creates_its_pods_and_becomes_running_when_every_worker_runs() -> None:
    created = reconcile(job(), PEFTJobStatus(), [], NOW)
    assert created.create_pods and created.status.phase == "Created" and created.status.start_time
    assert [e.reason for e in created.events] == ["PodsCreated"]
    half = reconcile(job(), created.status, [pod(0, "Running"), pod(1, "Pending")], NOW)
    assert half.status.phase == "Created" and not half.create_pods and half.status.workers.active == 2
    full = reconcile(job(), half.status, [pod(0, "Running"), pod(1, "Running")], NOW)
    assert full.status.phase == "Running" and condition(full.status, "Running").status == "True"


def test_replaying_an_observation_changes_nothing_and_posts_no_event() -> None:
    status = running()
    again = reconcile(job(), status, [pod(0, "Running"), pod(1, "Running")], NOW + timedelta(seconds=5))
    assert again.status == status and not again.events and not again.delete_pods and not again.create_pods


def test_rank_zero_success_records_the_result_the_trainer_writes(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The termination message is produced by the trainer's own writer, so both sides of the contract meet."""
    monkeypatch.setenv("PEFTJOB_RESULT_FILE", str(tmp_path / "result.json"))
    write_result(TrainerResult(artifact_uri="s3://out/j/adapter/", sha256="cd" * 32, bytes=4096, steps=40,
                               trainable_params=1000, total_params=90000, mlflow_run_id="run-7",
                               metrics={"loss": 0.25}))
    message = "last log line\n" + (tmp_path / "result.json").read_text()
    decision = reconcile(job(), running(), [pod(0, "Succeeded", 0, message), pod(1, "Running")], NOW)
    status = decision.status
    assert status.phase == "Succeeded" and status.completion_time
    assert status.artifact.uri == "s3://out/j/adapter/" and status.artifact.sha256 == "cd" * 32
    assert status.artifact.trainable_parameters == 1000 and status.mlflow.run_id == "run-7"
    assert status.progress.step == 40 and status.progress.loss == 0.25
    assert decision.delete_pods == ("j-worker-1",)  # a straggler goes once rank 0 is done
    assert condition(status, "Running").status == "False"


@pytest.mark.parametrize(("policy", "deleted"), [
    ("None", set()), ("Running", {"j-worker-1"}), ("All", {"j-worker-0", "j-worker-1", "j-worker-2"}),
])
def test_clean_pod_policy_says_which_pods_of_a_finished_job_go(policy: str, deleted: set[str]) -> None:
    """Kubeflow's cleanPodPolicy, on success and on every later reconcile of the finished job."""
    pods = [pod(0, "Succeeded", 0), pod(1, "Running"), pod(2, "Succeeded", 0)]
    finished = reconcile(job(3, cleanPodPolicy=policy), running(), pods, NOW)
    assert finished.status.phase == "Succeeded" and set(finished.delete_pods) == deleted
    again = reconcile(job(3, cleanPodPolicy=policy), finished.status, pods, NOW)
    assert set(again.delete_pods) == deleted and again.status == finished.status


def test_a_user_error_fails_at_once_with_the_worker_exit_code_and_message_tail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEFTJOB_RESULT_FILE", str(tmp_path / "result.json"))
    write_result(error_result("data.train: column 'label' missing in row 3", 2))
    message = (tmp_path / "result.json").read_text()
    decision = reconcile(job(backoffLimit=5), running(), [pod(0, "Running"), pod(1, "Failed", 2, message)], NOW)
    failed = condition(decision.status, "Failed")
    assert decision.status.phase == "Failed" and decision.status.restarts == 0
    assert failed.reason == "WorkerFailed" and "worker 1" in failed.message and "code 2" in failed.message
    assert "column 'label' missing in row 3" in failed.message
    assert decision.delete_pods == ("j-worker-0",)
    assert [e.type for e in decision.events] == ["Warning"]


def test_a_long_termination_message_is_cut_to_its_tail() -> None:
    message = "x" * 5000 + "THE END"
    decision = reconcile(job(), running(), [pod(0, "Failed", 1, message), pod(1, "Running")], NOW)
    assert decision.status.message.endswith("THE END (not retried: a user error)")
    assert len(decision.status.message) < 600


@pytest.mark.parametrize(("pods", "reason"), [
    ([pod(0, "Running"), pod(1, "Failed", 137)], "WorkerFailed"),  # OOM-killed / SIGKILL
    ([pod(0, "Failed", reason="Evicted"), pod(1, "Running")], "Evicted"),
    ([pod(0, "Running")], "WorkerDeleted"),  # worker 1 is gone
    ([pod(0, "Running"), pod(1, "Running", terminating=True)], "WorkerDeleted"),
])
def test_retryable_failures_restart_the_whole_gang(pods: list[dict[str, Any]], reason: str) -> None:
    decision = reconcile(job(backoffLimit=3), running(restarts=1), pods, NOW)
    assert decision.status.phase == "Restarting" and decision.status.restarts == 2
    assert condition(decision.status, "Restarting").reason == reason
    assert "restart 2/3" in decision.status.message
    assert set(decision.delete_pods) == {p["metadata"]["name"] for p in pods if not p["metadata"].get(
        "deletionTimestamp")}
    # the new gang comes only once the old one is gone
    waiting = reconcile(job(backoffLimit=3), decision.status, [pod(0, "Running", terminating=True)], NOW)
    assert not waiting.create_pods
    recreated = reconcile(job(backoffLimit=3), decision.status, [], NOW)
    assert recreated.create_pods and recreated.status.phase == "Created" and recreated.status.restarts == 2


def test_the_backoff_limit_turns_a_retryable_failure_into_failed() -> None:
    decision = reconcile(job(backoffLimit=2), running(restarts=2), [pod(0, "Failed", 143), pod(1, "Running")], NOW)
    assert decision.status.phase == "Failed" and decision.status.restarts == 2
    failed = condition(decision.status, "Failed")
    assert failed.reason == "BackoffLimitExceeded" and "worker 0" in failed.message and "143" in failed.message


def test_suspend_removes_the_pods_and_resume_recreates_them_with_a_fresh_deadline_clock() -> None:
    pods = [pod(0, "Running"), pod(1, "Running")]
    suspended = reconcile(job(suspend=True), running(), pods, NOW)
    assert suspended.status.phase == "Suspended" and set(suspended.delete_pods) == {"j-worker-0", "j-worker-1"}
    assert suspended.status.start_time is None
    resumed = reconcile(job(), suspended.status, [], NOW + timedelta(hours=1))
    assert resumed.create_pods and resumed.status.phase == "Created"
    assert condition(resumed.status, "Suspended").status == "False"
    assert resumed.status.start_time == "2026-01-02T04:04:05.000000Z"


def test_the_active_deadline_fails_a_job_that_runs_too_long() -> None:
    status = running(started=NOW)
    pods = [pod(0, "Running"), pod(1, "Running")]
    policy = job(activeDeadlineSeconds=60)
    assert not time_check_due(policy.spec.run_policy, status, NOW + timedelta(seconds=59))
    assert reconcile(policy, status, pods, NOW + timedelta(seconds=59)).status.phase == "Running"
    assert time_check_due(policy.spec.run_policy, status, NOW + timedelta(seconds=60))
    late = reconcile(policy, status, pods, NOW + timedelta(seconds=60))
    assert late.status.phase == "Failed" and condition(late.status, "Failed").reason == "DeadlineExceeded"
    assert set(late.delete_pods) == {"j-worker-0", "j-worker-1"}


def test_ttl_deletes_the_job_only_once_it_has_expired() -> None:
    policy = job(replicas=1, ttlSecondsAfterFinished=30)
    done = reconcile(policy, running(), [pod(0, "Succeeded", 0)], NOW).status
    assert done.phase == "Succeeded"
    assert not reconcile(policy, done, [], NOW + timedelta(seconds=29)).delete_job
    assert not time_check_due(policy.spec.run_policy, done, NOW + timedelta(seconds=29))
    assert reconcile(policy, done, [], NOW + timedelta(seconds=30)).delete_job
    assert time_check_due(policy.spec.run_policy, done, NOW + timedelta(seconds=30))
    assert not reconcile(job(replicas=1), done, [], NOW + timedelta(days=9)).delete_job  # no TTL: kept


def test_parse_result_takes_the_last_json_line_and_ignores_logs_and_garbage() -> None:
    result = TrainerResult(artifact_uri="s3://b/a", sha256="ef" * 32, mlflow_run_id="r")
    parsed = parse_result("Traceback? no\n{not json\n" + result.to_json() + "\n[1]\n")
    assert parsed == result
    assert parse_result("just logs, no result") is None
    assert parse_result("") is None
    assert parse_result('{"steps": "many"}') is None, "a result of the wrong shape is no result"


def test_a_result_from_a_newer_trainer_is_read_and_its_unknown_keys_ignored() -> None:
    parsed = parse_result('{"artifactUri": "s3://b/a", "steps": 4, "someFutureKey": {"x": 1}}')
    assert parsed is not None and parsed.artifact_uri == "s3://b/a" and parsed.steps == 4


def test_an_overlong_error_is_cut_so_the_termination_message_stays_whole_json(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEFTJOB_RESULT_FILE", str(tmp_path / "result.json"))
    write_result(error_result("bad row: " + "x" * 10_000, 2))
    text = (tmp_path / "result.json").read_text()
    parsed = parse_result(text)
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT and parsed is not None
    assert parsed.exit_code == 2 and parsed.error.startswith("bad row: xxx") and parsed.error.endswith(" ...")


def test_parse_progress_derives_percent_and_eta_and_reads_the_run() -> None:
    report = ProgressReport(step=25, total_steps=100, loss=1.5, throughput=12.0, eta_seconds=250,
                            mlflow=MlflowRun(run_id="abc"))
    progress, run = parse_progress({**report.model_dump(mode="json", by_alias=True), "unknownKey": 1}, "uid-1")
    assert (progress.step, progress.percent, progress.loss, progress.eta) == (25, 25.0, 1.5, "4m10s")
    assert run is not None and run.run_id == "abc"
    bare, none = parse_progress({"step": 3}, "uid-1")
    assert bare.percent is None and bare.eta is None and none is None
    with pytest.raises(ValueError, match="step"):
        parse_progress({"step": "three"}, "uid-1")


def test_a_progress_answer_of_another_job_is_not_believed() -> None:
    """Locally every job's rank 0 listens on the same port: another job's step and MLflow run must not be
    written into this job's status (and the deletion handler must not close that other run)."""
    other = ProgressReport(job_uid="uid-2", step=7, total_steps=10, mlflow=MlflowRun(run_id="not-ours"))
    assert parse_progress(other.model_dump(mode="json", by_alias=True), "uid-1") is None
    ours = other.model_copy(update={"job_uid": "uid-1"})
    assert parse_progress(ours.model_dump(mode="json", by_alias=True), "uid-1") is not None


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (12.4, "12s"), (250, "4m10s"), (3720, "1h2m"),
                                               (-5, "0s")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_an_invalid_spec_fails_once_with_every_problem_and_replays_quietly() -> None:
    problems = ["spec.method.lora.r: Input should be greater than 0", "spec.model: required field is missing"]
    first = reject(PEFTJobStatus(), problems, NOW)
    assert first.status.phase == "Failed" and first.status.completion_time
    failed = next(c for c in first.status.conditions if c.type == "Failed")
    assert failed.reason == "InvalidSpec" and all(p in failed.message for p in problems)
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "InvalidSpec")]
    again = reject(first.status, problems, NOW + timedelta(minutes=1))
    assert again.status == first.status and again.events == ()
    assert not first.create_pods and not first.delete_pods


def test_spec_edits_are_refused_leaf_by_leaf_from_kopfs_diff() -> None:
    diff = kopf.Diff([
        kopf.DiffItem(kopf.DiffOperation.ADD, ("runPolicy",), None, {"suspend": True}),
        kopf.DiffItem(kopf.DiffOperation.CHANGE, ("training", "learningRate"), 0.001, 0.01),
        kopf.DiffItem(kopf.DiffOperation.ADD, ("method",), None, {"lora": {"r": 4, "alpha": 8}}),
    ])
    assert refused_spec_changes(diff) == ["method.lora.alpha", "method.lora.r", "training.learningRate"]
