"""The RayJob entrypoint: `python -m graft.trainer --job-env GRAFT_JOB` (or `--job FILE`) `[--storage URI]`.

Exit code 0 when every stage succeeded; 1 when a stage failed (the reason is in the ledger); 2 when the job
file is unreadable or invalid, or its spec no longer matches the results its ledger records (`--restart`,
`--from-stage` as in `graft run`). Rerunning the same command resumes the job: on a cluster the operator hands
every attempt of a TransferJob the same spec (it refuses edits), so a retried RayJob resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m graft.trainer", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--job", help="TransferJob as a JSON or YAML file, or inline JSON ({...})")
    source.add_argument("--job-env", metavar="NAME", help="TransferJob as JSON in this environment variable (the "
                        "RayJob's head carries it in GRAFT_JOB)")
    parser.add_argument("--storage", default=None, help="storage root when spec.storage.uri is empty")
    parser.add_argument("--restart", action="store_true", help="start over, reusing no earlier result")
    parser.add_argument("--from-stage", default=None, help="rerun this stage and the later ones, keep earlier ones")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s graft.trainer %(levelname)s %(message)s")

    from graft.api.validation import InvalidSpec, load_job

    where = f"${args.job_env}" if args.job_env else args.job
    try:
        # KubeRay joins the entrypoint into one `bash -c` string, so the operator passes the job in the head's
        # environment and no user string reaches that shell. Inline JSON ({...}) is for local runs and tests.
        if args.job_env:
            text = os.environ.get(args.job_env)
            if not text:
                print(f"error: the environment has no {args.job_env} (the job, as JSON)", file=sys.stderr)
                return 2
        else:
            text = args.job if args.job.lstrip().startswith("{") else Path(args.job).read_text()
        job = load_job(text)
    except OSError as exc:
        print(f"error: {where}: cannot read the job file: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except InvalidSpec as exc:
        print(f"error: {where}: invalid TransferJob: {exc}", file=sys.stderr)
        return 2

    from graft.trainer.driver import Driver, SpecChanged, StageFailed
    from graft.trainer.errors import InputError

    from graft.ledger import DamagedLedger
    from graft.storage import StorageError

    try:
        driver = Driver(job, args.storage, restart=args.restart, from_stage=args.from_stage)
        ledger = driver.run()
    except SpecChanged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (StageFailed, InputError, StorageError, DamagedLedger) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = {"job": driver.uid, "root": driver.root, "model": ledger.model_uri, "progress": ledger.progress()}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
