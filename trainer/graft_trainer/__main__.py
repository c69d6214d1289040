"""The RayJob entrypoint: `python -m graft_trainer --job-env GRAFT_JOB` (or `--job FILE`) `[--storage URI]`.

Exit code 0 when every stage succeeded; 1 when a stage failed (the reason is in the ledger); 143 (SIGTERM) or
130 (SIGINT) when it was told to stop, with a line saying where the job resumes; 2 when the job file is unreadable
or invalid, or its spec no longer matches the results its ledger records (`--restart`, `--from-stage` as in
`graft run`), or another driver kept the job's lease (`graft/lease.py`) for `--lease-wait` seconds. Rerunning the
same command resumes the job: on a cluster the operator hands every attempt of a TransferJob the same spec (it
refuses edits), so a retried RayJob resumes.

The lease wait is for the cluster: a retried RayJob's new driver may start while the old one still lives (its pod
being torn down) or after it died without releasing (a lost node); waiting `LEASE_WAIT_S`, two TTLs, covers a
lease that was just renewed by a driver that then died, and a driver still renewing after that is another live
run of the job: this one fails with the line naming it rather than share the ledger.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from graft.lease import TTL_S

#: How long the entrypoint waits for another driver's lease (see above).
LEASE_WAIT_S = 2 * TTL_S


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m graft_trainer", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--job", help="TransferJob as a JSON or YAML file, or inline JSON ({...})")
    source.add_argument("--job-env", metavar="NAME", help="TransferJob as JSON in this environment variable (the "
                        "RayJob's head carries it in GRAFT_JOB)")
    parser.add_argument("--storage", default=None, help="storage root when spec.storage.uri is empty")
    parser.add_argument("--restart", action="store_true", help="start over, reusing no earlier result")
    parser.add_argument("--from-stage", default=None, help="rerun this stage and the later ones, keep earlier ones")
    parser.add_argument("--force-takeover", action="store_true", help="take the job's lease from its holder now")
    parser.add_argument("--lease-wait", type=float, default=LEASE_WAIT_S, metavar="SECONDS",
                        help=f"wait this long for another driver's lease to end (default {LEASE_WAIT_S:g})")
    return parser


def _read_job(args: argparse.Namespace):
    """The TransferJob the arguments name, or None when it cannot be read or is invalid (said in one line)."""
    from graft.api.validation import InvalidSpec, load_job

    where = f"${args.job_env}" if args.job_env else args.job
    try:
        # KubeRay joins the entrypoint into one `bash -c` string, so the operator passes the job in the head's
        # environment and no user string reaches that shell. Inline JSON ({...}) is for local runs and tests.
        if args.job_env:
            text = os.environ.get(args.job_env)
            if not text:
                print(f"error: the environment has no {args.job_env} (the job, as JSON)", file=sys.stderr)
                return None
        else:
            text = args.job if args.job.lstrip().startswith("{") else Path(args.job).read_text()
        return load_job(text)
    except OSError as exc:
        print(f"error: {where}: cannot read the job file: {exc.strerror or exc}", file=sys.stderr)
    except InvalidSpec as exc:
        print(f"error: {where}: invalid TransferJob: {exc}", file=sys.stderr)
    return None


def main(argv: list[str] | None = None) -> int:
    from graft_trainer import stopping

    stopping.install()  # first: a SIGTERM from here on is a stop with its line and exit code, not a bare death
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s graft_trainer %(levelname)s %(message)s")
    job = _read_job(args)
    if job is None:
        return 2

    from graft.lease import LeaseHeld, LeaseLost
    from graft.ledger import DamagedLedger
    from graft.storage import StorageError
    from graft_trainer.driver import Driver, SpecChanged, StageFailed
    from graft_trainer.errors import InputError

    driver = None
    try:
        driver = Driver(job, args.storage, restart=args.restart, from_stage=args.from_stage,
                        force_takeover=args.force_takeover, lease_wait=args.lease_wait)
        ledger = driver.run()
    except (KeyboardInterrupt, SystemExit) as exc:  # SIGTERM (the pod is stopped) or SIGINT: resumable, one line
        signum = stopping.signal_of(exc)
        if signum is None:
            raise
        print(stopping.resumable_line(driver.root if driver else None, signum), file=sys.stderr)
        stopping.exit_now(stopping.exit_code(signum))
    except (SpecChanged, LeaseHeld) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (StageFailed, InputError, StorageError, LeaseLost, DamagedLedger) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = {"job": driver.uid, "root": driver.root, "model": ledger.model_uri, "progress": ledger.progress()}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
