"""The ``cion`` command: validate and run job files, make the synthetic corpus, run the demo, submit to Ray."""

from __future__ import annotations

import json
import sys
from typing import List, Optional

import typer

from cion_dist.errors import CionError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging, library logs, full tracebacks"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="only warnings, errors and the final summary"),
) -> None:
    from cion_dist.quiet import configure

    configure(1 if verbose else -1 if quiet else 0)


@app.command()
def validate(job_file: str, overrides: Optional[List[str]] = typer.Argument(None, help="key.sub=value")) -> None:
    """Check a job file (and overrides) against the typed config; print the resolved config."""
    from cion_dist.config import load_job
    from cion_dist.redact import redact_obj

    job = load_job(job_file, overrides or [])
    typer.echo(json.dumps(redact_obj(json.loads(job.model_dump_json())), indent=2))
    typer.echo(f"{job_file}: valid {job.stage} job")


@app.command()
def run(job_file: str, overrides: Optional[List[str]] = typer.Argument(None, help="key.sub=value")) -> None:
    """Run the stage (or pipeline) a job file names."""
    from cion_dist.config import load_job
    from cion_dist.pipeline.runner import run_pipeline, run_stage
    from cion_dist.pipeline.summary import print_results
    from cion_dist.preflight import run_preflight

    job = load_job(job_file, overrides or [])
    run_preflight(job)
    results = run_pipeline(job) if job.stage == "pipeline" else [run_stage(job)]
    print_results(results)


@app.command()
def synth(
    out: str = typer.Option(..., "--out", help="corpus URI: local folder or s3://bucket/prefix"),
    identities: int = typer.Option(12),
    cameras: int = typer.Option(3),
    videos: int = typer.Option(6),
    frames: int = typer.Option(120),
    seed: int = typer.Option(0),
    benchmark_identities: int = typer.Option(8, help="held-out identities for the Market-layout benchmark"),
) -> None:
    """Write a synthetic person-video corpus: mp4 clips, manifest, ground truth and a re-ID benchmark."""
    from cion_dist.config_base import StorageConfig
    from cion_dist.storage import Storage
    from cion_dist.synth.config import SynthConfig
    from cion_dist.synth.generate import generate_corpus

    cfg = SynthConfig(
        out=out,
        identities=identities,
        cameras=cameras,
        videos=videos,
        frames=frames,
        seed=seed,
        benchmark_identities=benchmark_identities,
    )
    info = generate_corpus(cfg, Storage(StorageConfig()))
    typer.echo(json.dumps(info, indent=2, default=str))


@app.command()
def demo(
    out: str = typer.Option("./cion-demo", "--out", help="where the demo writes everything"),
    s3: bool = typer.Option(False, "--s3", help="store data in a loopback S3 endpoint (moto) instead of files"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.sub=value on the embedded demo job"),
) -> None:
    """Run the whole pipeline on a small synthetic corpus with embedded defaults (local Ray, local MLflow)."""
    from cion_dist.pipeline.demo import run_demo

    run_demo(out=out, s3=s3, overrides=overrides or [])


@app.command()
def up(
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="logical CPUs (default: max(4, cores))"),
) -> None:
    """Start one local Ray head that later ``cion run`` / ``cion demo`` calls join (stop it with ``cion down``)."""
    from cion_dist.localcluster import record_path
    from cion_dist.localcluster import up as start

    rec, started = start(num_cpus=num_cpus)
    state = "started" if started else "already running"
    typer.echo(f"local Ray cluster {state}: {rec.address} ({rec.num_cpus} CPUs), dashboard {rec.dashboard}")
    typer.echo(
        f"recorded in {record_path()}; jobs: ray job submit --address {rec.dashboard} --working-dir . jobs/<stage>.yaml"
    )


@app.command()
def down() -> None:
    """Stop the local Ray head that ``cion up`` started."""
    from cion_dist.localcluster import down as stop

    rec = stop()
    typer.echo(f"stopped the local Ray cluster at {rec.address}" if rec else "no local Ray cluster is recorded")


@app.command("evaluate-tracking")
def evaluate_tracking(
    ingest_uri: str = typer.Argument(..., help="an ingest run folder"),
    gt: str = typer.Option(..., "--gt", help="ground-truth Parquet of the synthetic corpus"),
) -> None:
    """MOTA, IDF1 and ID switches of ingest tracklets against ground truth."""
    from cion_dist.ingest.tracking_eval import evaluate_ingest_tracking

    typer.echo(json.dumps(evaluate_ingest_tracking(ingest_uri, gt), indent=2))


@app.command()
def lineage(model_uri: str, tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI")) -> None:
    """Print the chain model version -> pretrain run -> correlation run -> ... -> video manifest."""
    from cion_dist.mlflow_io.lineage import format_chain, lineage_chain

    typer.echo(format_chain(lineage_chain(model_uri, tracking_uri=tracking_uri)))


@app.command()
def promote(job_file: str, overrides: Optional[List[str]] = typer.Argument(None)) -> None:
    """Compare a candidate model version with the champion and move the alias only if it is better."""
    from cion_dist.config import load_job
    from cion_dist.pipeline.runner import run_stage
    from cion_dist.pipeline.summary import print_results
    from cion_dist.preflight import run_preflight

    job = load_job(job_file, overrides or [])
    run_preflight(job, ["promote"])
    print_results([run_stage(job, "promote")])


@app.command()
def submit(
    job_file: str,
    overrides: Optional[List[str]] = typer.Argument(None),
    address: str = typer.Option("http://127.0.0.1:8265", "--address", help="Ray dashboard address"),
    wait: bool = typer.Option(False, "--wait", help="follow the job until it ends"),
) -> None:
    """Submit ``cion run JOB`` to a Ray cluster through its job API with the YAML's runtime environment."""
    from cion_dist.config import load_job
    from cion_dist.pipeline.submit import submit_job

    job = load_job(job_file, overrides or [])
    submit_job(job, job_file, overrides or [], address=address, wait=wait)


def _fail(message: str, code: int) -> None:
    from cion_dist.redact import redact_text

    typer.echo(f"error: {redact_text(message)}", err=True)
    sys.exit(code)


def _on_sigterm(signum, frame) -> None:  # noqa: ARG001
    # an exception, so every open MLflow run and stage lock unwinds (runs end FAILED, locks are released)
    raise KeyboardInterrupt(f"terminated by signal {signum}")


def _cion_cause(e: BaseException) -> Optional[CionError]:
    """The user's error inside a Ray wrapper: ``RayTaskError(CionError)`` carries it as ``cause``, Ray Data and
    Ray Train chain it as ``__cause__``; the wrapper's text is a remote traceback, the original is one line."""
    seen: set = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(cause, CionError):
            return _cion_cause(cause) or cause
        if isinstance(e, CionError) and type(e).__module__.startswith("cion_dist"):
            return e
        e = cause if isinstance(cause, BaseException) else (e.__cause__ or e.__context__)
    return None


def _user_message(e: CionError) -> str:
    inner = _cion_cause(e)
    return str(inner if inner is not None else e)


# --- footage: manifests from real video folders, contact sheets of a run ---------------------------------------


@app.command()
def manifest(
    root: str = typer.Argument(..., help="folder or s3:// prefix holding the videos"),
    out: str = typer.Option(..., "--out", help="manifest Parquet URI to write (errors go beside it)"),
    source_pattern: Optional[str] = typer.Option(
        None, help="regex with a (?P<source>...) group over the path below ROOT; default: the parent folder's name"
    ),
    time_pattern: Optional[str] = typer.Option(None, help="regex with a (?P<time>...) group over the file name"),
    time_format: Optional[str] = typer.Option(None, help="strptime format of the time group (UTC), e.g. %Y%m%d_%H%M%S"),
    segment_s: Optional[float] = typer.Option(None, help="cut each video into clips of at most this many seconds"),
    files_per_task: int = typer.Option(8, help="files probed by one Ray task"),
) -> None:
    """Probe every video under ROOT (Ray tasks) and write a manifest ingest can read.

    start_time is seconds since the Unix epoch (UTC): from --time-pattern, else the container's creation_time.
    """
    from cion_dist.config_base import StorageConfig
    from cion_dist.ingest.manifest_builder import ManifestSpec, build_manifest
    from cion_dist.storage import Storage

    spec = ManifestSpec(
        root=root,
        out=out,
        source_pattern=source_pattern,
        time_pattern=time_pattern,
        time_format=time_format,
        segment_s=segment_s,
        files_per_task=files_per_task,
    )
    typer.echo(json.dumps(build_manifest(spec, Storage(StorageConfig())), indent=2))


@app.command()
def inspect(
    run_uri: str = typer.Argument(..., help="an ingest or correlate run folder (local or s3://)"),
    out: str = typer.Option("./cion-inspect", "--out", help="folder for index.html and its PNG contact sheets"),
    groups: int = typer.Option(24, help="tracklets or identities shown"),
    per_group: int = typer.Option(12, help="crops per tracklet, identity or removal reason"),
) -> None:
    """Contact sheets of a run: tracklets (ingest); identities, risky merges first, and removed images (correlate)."""
    from cion_dist.config_base import StorageConfig
    from cion_dist.inspect.inspect_run import inspect_run
    from cion_dist.storage import Storage

    typer.echo(json.dumps(inspect_run(run_uri, out, Storage(StorageConfig()), groups, per_group), indent=2))


def main() -> None:
    import signal

    from cion_dist.redact import install_log_redaction, redact_text

    install_log_redaction()
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        pass
    verbose = any(a in ("-v", "--verbose") for a in sys.argv[1:])
    try:
        app(standalone_mode=False)
    except CionError as e:
        if verbose:
            import traceback

            typer.echo(redact_text("".join(traceback.format_exception(e))), err=True)
        _fail(_user_message(e), 2)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:
        import click
        from pydantic import ValidationError

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, ValidationError):
            from cion_dist.config.loader import format_validation_error

            _fail(format_validation_error(e, "command line"), 2)
        if _cion_cause(e) is not None and not verbose:
            _fail(str(_cion_cause(e)), 2)
        if verbose:
            import traceback

            typer.echo(redact_text("".join(traceback.format_exception(e))), err=True)
        hint = "" if verbose else " (run with -v for the traceback)"
        _fail(f"{type(e).__name__}: {e}{hint}", 1)


if __name__ == "__main__":
    main()
