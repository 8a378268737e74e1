"""Durable jobs: a queue in the database that loses nothing."""

from keel.jobs.models import Job, JobState
from keel.jobs.module import jobs_module
from keel.jobs.registry import Permanent, Transient, job
from keel.jobs.service import cancel, enqueue, enqueue_many, retry
from keel.jobs.worker import JobContext, LeaseLost, Worker

__all__ = [
    "Job",
    "JobContext",
    "JobState",
    "LeaseLost",
    "Permanent",
    "Transient",
    "Worker",
    "cancel",
    "enqueue",
    "enqueue_many",
    "job",
    "jobs_module",
    "retry",
]
