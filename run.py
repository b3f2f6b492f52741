"""Command line of the pipeline.

    python run.py list                      each phase: done / missing / stale
    python run.py phase 1 [--start 0 --end 20]
    python run.py phase 4.8 --viz-only      redraw a phase's figures from its saved results
    python run.py pipeline [--force]        every phase in order, skipping current ones

Bad input (unknown phase or key, bad value, missing upstream output) prints one line and exits 2
before anything is written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from common.config import Config, load_config
from common.distributed import current_shard, launched
from common.errors import PipelineError
from common.logging import add_phase_log_file, configure_console, get_logger
from common.phases import PHASES, PhaseSpec, get_phase
from common.plan import plan_lines
from common.resources import CostMeter
from common.phase_run import PhaseRun
from common.utils import all_phase_statuses, load_json, phase_status, save_json

logger = get_logger("run")


def _parser() -> argparse.ArgumentParser:
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--profile", metavar="NAME", help="a shipped set of config keys (profiles/NAME.yaml), e.g. "
                                                         "'quick': every phase in minutes, a smoke view")
    shared.add_argument("--config", metavar="FILE.yaml", help="YAML file of config keys (over the profile's)")
    shared.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="override one config key (repeatable), e.g. --set layers=5,10")
    shared.add_argument("--data-dir", metavar="DIR", help="folder for every phase's output (default: data)")
    shared.add_argument("--start", type=int, default=None, help="first task index of the phase's input (0-based)")
    shared.add_argument("--end", type=int, default=None, help="task index to stop before (exclusive)")
    shared.add_argument("--force", action="store_true", help="redo the work even if outputs or checkpoints exist")
    shared.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    parser = argparse.ArgumentParser(prog="run.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    phase = commands.add_parser("phase", parents=[shared], help="run one phase")
    phase.add_argument("phase_id", help="phase id: " + ", ".join(spec.id for spec in PHASES))
    phase.add_argument("--viz-only", action="store_true", help="only redraw the phase's figures from its saved results")
    commands.add_parser("pipeline", parents=[shared], help="run every phase that is missing or stale")
    commands.add_parser("list", parents=[shared], help="show each phase's state")
    return parser


def run_phase(config: Config, spec: PhaseSpec) -> Path | None:
    """Run one phase; returns its manifest, or None when only a slice of its tasks was done (or this is not
    the main process of a distributed launch)."""
    phase = PhaseRun.start(config, spec)  # fails with the command to run before anything is written
    shard = current_shard()
    if not shard.is_main and not spec.shards:
        return None  # a phase that does not generate runs in the main process alone
    if not shard.is_main:
        return spec.runner().run(phase)
    handler = add_phase_log_file(config.data_path, spec.folder)
    meter = CostMeter()
    try:
        logger.info("phase %s (%s) starting", spec.id, spec.title)
        result = spec.runner().run(phase)
        if result is not None:  # its cost beside what it read and wrote, for phase 5's table
            cost = meter.record()
            save_json({**load_json(result), "cost": cost}, result)
            logger.info("phase %s finished in %.1f s (peak resident memory %.0f MiB)", spec.id, cost["wall_s"],
                        cost["peak_resident_mib"])
        return result
    finally:
        handler.close()
        logging.getLogger().removeHandler(handler)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_console(args.log_level)
    try:
        overrides = list(args.set)
        if args.start is not None:
            overrides.append(f"task_start={args.start}")
        if args.end is not None:
            overrides.append(f"task_end={args.end}")
        if args.force:
            overrides.append("force=true")
        config = load_config(args.config, overrides, args.data_dir, args.profile)

        if args.command == "pipeline" and launched():
            raise PipelineError("under torchrun / accelerate launch run one phase at a time (`run.py phase 1`); "
                                "`pipeline` runs in a single process")
        if args.command == "list":
            for spec, state, reason in all_phase_statuses(config):
                print(f"{spec.id:>5}  {state:<8} {spec.title}  [{reason}]")
            return 0
        if args.command == "phase":
            spec = get_phase(args.phase_id)
            if args.viz_only:
                replot = getattr(spec.runner(), "replot", None)
                if replot is None:
                    raise PipelineError(f"phase {spec.id} has no --viz-only: its figures are made with its results")
                replot(config)
            else:
                run_phase(config, spec)
            return 0
        to_run = [spec for spec, state, _ in all_phase_statuses(config) if state != "done" or config.force]
        for line in plan_lines(config, to_run):
            logger.info(line)
        for spec in PHASES:
            state, reason = phase_status(config, spec)  # fresh: an upstream rerun makes this one stale
            if state == "done" and not config.force:
                logger.info("phase %s is current (%s): skipped", spec.id, reason)
                continue
            logger.info("phase %s is %s (%s)", spec.id, state, reason)
            if run_phase(config, spec) is None:
                logger.warning("phase %s ran only a slice of its tasks: the pipeline stops here", spec.id)
                return 0
        return 0
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
