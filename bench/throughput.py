"""Issue 4's benchmark: the stream worker's throughput, latency, memory and exactness.

    python bench/throughput.py [--mode single|two-workers|all] [--events N] [--quick]
                               [--memory-users N] [--single] [--no-record]

Starts the embedded broker (Tansu) and Redis, then runs ``python -m spendstream worker
--log-level error`` as a black box and reads its results from Redis, as an app would:

Events are published as the SDK emitter publishes them: rounds of 500, packed into one
record (a JSON array) per partition; ``--single`` publishes one record per event instead,
the classic form other producers may use (the ceilings then read that form too).

* **throughput** (``single``): N realistic events (100k skewed users, 30 features, four
  models, half priced by the worker) are published first; the topic is then read by a
  plain aiokafka consumer and by a bare faust agent (the two ceilings), then by the
  worker, timed from its first ``spend:*`` key in Redis to the moment the global day,
  every feature and every expected cutoff flag are final;
* **latency** (``single``): the same worker under a steady 5,000 events/s for 20 s; 200
  probe users cross their budget in one event, timed from ``send`` to the moment their
  ``cutoff:user`` flag is in Redis (polled every 5 ms);
* **memory** (``single``): a fresh worker's RSS (``/proc/<pid>/status``) idle after a
  warm-up and after one event from each of ``--memory-users`` distinct users in one day
  window (200k by default, extrapolated to 1M and labelled so);
* **scale-out** (``two-workers``): two workers in one consumer group on 8 partitions,
  joined before the events arrive; combined rate.

Every total (global day and hour, each feature, each user) and the exact sets of warn
and cutoff flags are compared with the ``Decimal`` sums of what was published; any
difference is a FAIL and a non-zero exit. Targets (pass/miss, not the exit code;
issue 11): >= 50,000 events/s per worker on packed records and >= 25,000 with ``--single``,
or >= 1/4 of the aiokafka ceiling; p99 event-to-flag < 500 ms at 5,000 events/s; < 300
bytes per active user (issue 4). Each run appends one JSON line (figures,
checks, commit, date) to ``bench/results.jsonl``, except with ``--quick`` or
``--no-record``. Not part of the tests; ``--quick`` is a one-minute smoke run.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from _phases import (
    MEMORY_USERS,
    Run,
    latency_phase,
    log,
    memory_phase,
    scale_out_phase,
    throughput_phase,
)
from _procs import Children
from _report import git_commit, print_table, record

from spendstream.embedded import EmbeddedBroker, EmbeddedRedis


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--quick`` shrinks every size for a smoke run."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("single", "two-workers", "all"), default="all")
    p.add_argument("--events", type=int, help="events per throughput run (300,000)")
    p.add_argument("--users", type=int, help="everyday users (100,000)")
    p.add_argument("--capped", type=int, default=250, help="users in the tiny 'capped' tier")
    p.add_argument("--memory-users", type=int,
                   help="distinct users of the memory phase (200,000; below 1,000,000 the "
                        "1M figure is extrapolated and labelled so)")
    p.add_argument("--latency-rate", type=int, default=5_000, help="events/s offered")
    p.add_argument("--latency-seconds", type=float, help="length of the paced load (20)")
    p.add_argument("--probes", type=int, help="latency probes (200)")
    p.add_argument("--single", action="store_true",
                   help="publish one event per record (the classic form) instead of the SDK "
                        "emitter's packed records")
    p.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting for every worker, e.g. SPENDSTREAM_FLUSH_INTERVAL=0.1 "
                        "(repeatable; recorded with the figures)")
    p.add_argument("--quick", action="store_true", help="small sizes, nothing recorded")
    p.add_argument("--no-record", action="store_true", help="do not append to results.jsonl")
    p.add_argument("--ledger-url", metavar="URL",
                   help="an admin postgresql:// URL: after the throughput phase, time "
                   "`spendstream ledger run` (1, then 2 processes) over the same events, "
                   "each into a scratch database on this server, next to the worker's rate")
    p.add_argument("--ledger-in-worker", action="store_true",
                   help="with --ledger-url: the workers also write the ledger in their own "
                   "thread, into that database (what the ledger costs the worker)")
    args = p.parse_args(argv)
    quick = args.quick
    for name, full, small in (("events", 300_000, 20_000), ("users", 100_000, 5_000),
                              ("memory_users", MEMORY_USERS, 20_000),
                              ("latency_seconds", 20.0, 5.0), ("probes", 200, 20)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if quick:
        args.capped = min(args.capped, 50)
    return args


def run_all(run: Run) -> None:
    """The phases the mode asks for, in order (the longest, memory, last)."""
    budgets = run.workdir / "budgets.yaml"
    mode = run.args.mode
    if mode in ("single", "all"):
        probes = [f"probe-{i}" for i in range(run.args.probes)]
        worker = throughput_phase(run, budgets, probes)
        if run.args.ledger_url:
            from _ledger_phase import ledger_phase

            assert run.expected is not None
            ledger_phase(run, run.phase("tp"), budgets, run.expected, run.args.events,
                         run.worker_rate)
        latency_phase(run, worker, probes)
        run.children.stop(worker)
    if mode in ("two-workers", "all"):
        scale_out_phase(run, run.workdir / "budgets-two.yaml")
    if mode in ("single", "all"):
        memory_phase(run, budgets)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 1 when a total is not exact (or a phase failed), else 0."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    started = time.monotonic()
    commit = git_commit(Path(__file__).resolve().parent.parent)  # the code being measured
    workdir = Path(tempfile.mkdtemp(prefix="spendstream-bench-"))
    children = Children(workdir)
    with EmbeddedBroker() as broker, EmbeddedRedis() as store:
        run = Run(args, broker, store, children, workdir)
        log(f"run {run.run_id}: mode {args.mode}, logs in {workdir}")
        failure: BaseException | None = None
        try:
            run_all(run)
        except (Exception, KeyboardInterrupt, SystemExit) as e:  # report what was measured
            failure = e
            if not isinstance(e, RuntimeError | KeyboardInterrupt | SystemExit):
                traceback.print_exc()
        finally:
            children.stop_all()
            run.close()
    elapsed = time.monotonic() - started
    print()
    print_table(run.figures, run.checks)
    failed = sum(c.failed for c in run.checks)
    print(f"\n{failed} of {len(run.checks)} exactness "
          f"checks failed; took {elapsed / 60:.1f} min")
    if failure is not None:
        print(f"FAILED ({type(failure).__name__}): {failure}; partial figures above, not "
              f"recorded", file=sys.stderr)
    if not (args.quick or args.no_record or failure):
        record(run.figures, run.checks, _parameters(args, elapsed), commit)
        print("appended to bench/results.jsonl")
    return 1 if failure or failed else 0


def _parameters(args: argparse.Namespace, elapsed: float) -> dict[str, Any]:
    return {"mode": args.mode, "events": args.events, "users": args.users,
            "memory_users": args.memory_users, "latency_rate": args.latency_rate,
            "latency_seconds": args.latency_seconds, "probes": args.probes,
            "single": args.single, "worker_env": args.worker_env,
            "minutes": round(elapsed / 60, 1)}


if __name__ == "__main__":
    sys.exit(main())
