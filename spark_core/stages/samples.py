"""The side file `RUN/samples/iteration=k/<phase>.parquet`: sampled tokens and their log-probs
under the sampler, which the train stage needs and the `rollouts` table has no room for.
Written by the rollout stage, read by verify, recycle and train."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from spark_core.periods import Task
from spark_core.model.rollout import Sample
from spark_core.data.store import atomic_write_parquet, staging_dir
from spark_core.timing import timed


_SAMPLE_SCHEMA = pa.schema([
    ("prompt_id", pa.string()), ("kind", pa.string()), ("prompt", pa.string()), ("label", pa.string()),
    ("question", pa.string()), ("sample_index", pa.int32()), ("text", pa.string()),
    ("prompt_ids", pa.list_(pa.int32())), ("token_ids", pa.list_(pa.int32())),
    ("logprobs", pa.list_(pa.float64())), ("finish_reason", pa.string()), ("prompt_tokens", pa.int32()),
])


@timed("parquet")
def write_samples(run_dir: Path, path: Path, tasks: list[Task], groups: list[list[Sample]]) -> None:
    rows = [dict(prompt_id=t.prompt_id, kind=t.kind, prompt=t.prompt, label=t.label, question=t.question,
                 sample_index=s.sample_index, text=s.text, prompt_ids=s.prompt_ids, token_ids=s.token_ids,
                 logprobs=s.logprobs, finish_reason=s.finish_reason, prompt_tokens=s.prompt_tokens)
            for t, g in zip(tasks, groups) for s in g]
    atomic_write_parquet(pa.Table.from_pylist(rows, schema=_SAMPLE_SCHEMA), path, staging_dir(run_dir))


@timed("parquet")
def read_samples(path: Path) -> tuple[list[Task], list[list[Sample]]]:
    """Tasks and their groups of samples, in the order they were sampled."""
    tasks: list[Task] = []
    groups: list[list[Sample]] = []
    for r in pq.read_table(path).to_pylist():
        if not tasks or tasks[-1].prompt_id != r["prompt_id"]:
            tasks.append(Task(r["prompt_id"], r["kind"], r["prompt"], r["label"], r["question"]))
            groups.append([])
        groups[-1].append(Sample(len(tasks) - 1, r["sample_index"], r["text"], r["token_ids"], r["logprobs"],
                                 r["finish_reason"], r["prompt_tokens"], r["prompt_ids"]))
    return tasks, groups
