"""A FastAPI app that queues jobs with redisaq and processes them in its own lifespan.

``POST /jobs`` submits a job (``Producer.submit``); a consumer started in the
app's lifespan handles it; ``GET /jobs/{job_id}`` shows its status record and
``GET /jobs/{job_id}/result`` waits for it. Start more copies of the app (on
other ports) and they share the work: their consumers are members of one
group and split the topic's partitions.

Run::

    redisaq server                     # prints a URL; or use your own Redis
    REDIS_URL=redis://127.0.0.1:PORT/0 python examples/fastapi/app.py

    curl -X POST localhost:8080/jobs -H 'content-type: application/json' \\
         -d '{"task": "resize", "user": "u1", "seconds": 1}'
    curl localhost:8080/jobs/<job_id>/result

Environment: ``REDIS_URL`` (default redis://localhost:6379/0), ``APP_PORT``
(8080), ``TOPIC`` (fastapi-jobs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, Field

from redisaq_core import (
    ConfigurationError,
    Consumer,
    JobNotFoundError,
    JobTimeoutError,
    Message,
    Producer,
    ResultStore,
)

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
TOPIC = os.environ.get("TOPIC", "fastapi-jobs")
APP_PORT = int(os.environ.get("APP_PORT", "8080"))

log = logging.getLogger("example.app")


class JobRequest(BaseModel):
    """A job: what to do, for whom (jobs of one user run in order), how long it takes."""

    task: str = Field(min_length=1, max_length=100)
    user: str = Field("anonymous", min_length=1, max_length=100)
    seconds: float = Field(0.5, ge=0, le=60)


async def process_job(message: Message) -> dict[str, Any]:
    """The handler: pretend to work; its return value becomes the job's result."""
    payload = message.payload
    log.info("job %s: %s for %s", message.job_id, payload["task"], payload["user"])
    await asyncio.sleep(payload["seconds"])
    return {"task": payload["task"], "user": payload["user"], "partition": message.partition}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with (
        Producer(TOPIC, redis_url=REDIS_URL, init_partitions=4) as producer,
        ResultStore(redis_url=REDIS_URL) as results,
    ):
        consumer = Consumer(TOPIC, group_name="fastapi-example", redis_url=REDIS_URL)
        processing = asyncio.create_task(consumer.process(process_job))
        app.state.producer = producer
        app.state.results = results
        try:
            yield
        finally:
            await consumer.stop()  # in-flight jobs finish, partitions are handed over
            with contextlib.suppress(asyncio.CancelledError):
                await processing
            await consumer.close()


app = FastAPI(title="redisaq FastAPI example", lifespan=lifespan)


@app.post("/jobs", status_code=201)
async def submit(job: JobRequest) -> dict[str, str]:
    """Queue a job; the jobs of one user go to one partition, so they run in order."""
    handle = await app.state.producer.submit(job.model_dump(), partition_key="user")
    return {"job_id": handle.id, "status": "queued"}


@app.get("/jobs/{job_id:path}/result")
async def result(job_id: str, timeout: float = Query(10.0, gt=0, le=60)) -> dict[str, Any]:
    """Wait (at most ``timeout`` seconds) for the job to finish; return its record."""
    try:
        record = await app.state.results.wait(job_id, timeout=timeout)
    except JobNotFoundError:
        raise HTTPException(404, f"no job {job_id}") from None
    except ConfigurationError as exc:
        raise HTTPException(422, str(exc)) from None
    except JobTimeoutError:
        raise HTTPException(504, f"job {job_id} is still running") from None
    return dict(record.as_dict())


@app.get("/jobs/{job_id:path}")
async def status(job_id: str) -> dict[str, Any]:
    """The job's status record (status, timestamps, attempts, result once completed)."""
    try:
        record = await app.state.results.get(job_id)
    except ConfigurationError as exc:
        raise HTTPException(422, str(exc)) from None
    if record is None:
        raise HTTPException(404, f"no job {job_id}")
    return dict(record.as_dict())


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    uvicorn.run(app, host="127.0.0.1", port=APP_PORT)
