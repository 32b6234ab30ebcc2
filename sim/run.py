"""`python -m sim` end to end: sites, pretraining, baselines, federations (all seeds in one engine session),
federated-then-local fine-tuning and calibration, cross-site scores, statistics and report; once per site size
when the experiment sweeps sizes (`sim.sizes`)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from core.checkpoint import load_checkpoint
from core.data.dataset import BoneAgeDataset
from core.errors import FederationFailed
from core.inputs import InputSettings
from server.outcome import FederationOutcome
from sim.baselines import federated_calibrated, federated_then_local, run_baselines, seeded
from sim.config import SimConfig
from sim.experiment import (Evaluation, device_of, epsilon_by_site, evaluate_everywhere, evaluate_fedbn,
                            federation_runs, leave_one_out_runs, load_test_splits, per_round_mad, without_site_name)
from sim.federation import SimulatedRun, run_federations
from sim.report import write_report
from sim.sites import PreparedSite, prepare_sites, pretrained_model
from sim.sizes import sized_sites, training_count
from strategies.options import OPTIONS, format_options

logger = logging.getLogger("ossifl.sim")
STAGES = 6


@dataclass
class Outcome:
    """Everything one comparison leaves for the report (all sizes together)."""

    rows: list[Evaluation] = field(default_factory=list)
    cross: list[Evaluation] = field(default_factory=list)  # each site's own model on every site's test split
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    privacy_points: list[tuple[str, float, float]] = field(default_factory=list)


def run_experiment(config: SimConfig) -> list[Evaluation]:
    """Run the whole comparison and write results.csv, cross_site.csv, report.md and the plots to `out_dir`."""
    started = time.perf_counter()
    config.out_dir.mkdir(parents=True, exist_ok=True)
    logger.info("[1/%d] sites", STAGES)
    source, sites = prepare_sites(config)
    logger.info("[2/%d] pretrained source model", STAGES)
    pretrained = pretrained_model(config, source)
    loaded = load_checkpoint(pretrained)
    model_config = loaded.model.config
    config = replace(config, image_size=model_config.image_size, width=model_config.width)
    (config.out_dir / "config.json").write_text(json.dumps({**config.to_dict(), "pretrained": str(pretrained)},
                                                           indent=2))
    tests = load_test_splits(sites, config.image_size, InputSettings.of(loaded).preprocess)
    outcome = Outcome()
    plans = [plan(config, sites, pretrained, tests, size, outcome) for size in config.site_sizes or (None,)]
    runs = [run for p in plans for _, run in p.runs]
    logger.info("[4/%d] %d federated runs of %d rounds on %d sites (FedBN among them), one engine session", STAGES,
                len(runs), config.rounds, len(sites))
    outcomes = run_federations(runs)
    failed = [f"{run.config.out_dir.name}: {done.failure}" for run, done in zip(runs, outcomes) if done.failure]
    if failed:  # a comparison with a run that never trained would report it as if it had
        raise FederationFailed(f"{len(failed)} of {len(runs)} federated runs failed, no report written: "
                               f"{' | '.join(failed)}")
    done = iter(outcomes)
    for p in plans:
        finish(config, p, [next(done) for _ in p.runs], tests, outcome)
    held_out = [(p, rep, site, run) for p in plans for rep, site, run in p.held_out]
    if held_out:
        logger.info("leave-one-site-out: %d federations of %d sites, one engine session", len(held_out),
                    len(sites) - 1)
        for (p, rep, site, run), done in zip(held_out, run_federations([run for *_, run in held_out])):
            outcome.rows += score_held_out(rep, p, site, run, done, tests)
    logger.info("[6/%d] report", STAGES)
    seconds = time.perf_counter() - started
    summary = write_report(config, outcome.rows, outcome.curves, outcome.privacy_points, seconds, outcome.cross)
    logger.info("results in %s (results.csv, cross_site.csv, report.md, plots); total %.1f min", config.out_dir,
                seconds / 60)
    print("\n" + summary)
    return outcome.rows


@dataclass
class Plan:
    """One comparison (every seed) at one site size, its baselines done and its federations planned."""

    size: int | None
    at_size: dict[int, tuple[list[PreparedSite], dict[str, int]]]  # seed -> sites, training images per site
    runs: list[tuple[SimConfig, SimulatedRun]]
    rows: list[Evaluation]
    cross: list[Evaluation]
    held_out: list[tuple[SimConfig, PreparedSite, SimulatedRun]]  # leave-one-site-out runs and the site left out


def plan(config: SimConfig, sites: list[PreparedSite], pretrained: Path, tests: dict[str, BoneAgeDataset],
         size: int | None, outcome: Outcome) -> Plan:
    """The baselines of one comparison with the sites as they are (`size` None) or cut to `size` training images,
    and its federated runs (run later, with every other size's, in one engine session)."""
    if size is not None:
        logger.info("site size %d: each site's training split cut to %d images (test split unchanged)", size, size)
        config = replace(config, out_dir=config.out_dir / f"size-{size}")
    repetitions = [seeded(config, seed) for seed in config.seed_list()]
    whole = {site.name: training_count(site) for site in sites} if size is None else {}
    at_size = {r.seed: sized_sites(sites, size, r.seed, config.out_dir.parent / "sites") if size is not None
               else (sites, whole) for r in repetitions}
    rows: list[Evaluation] = []
    cross: list[Evaluation] = []
    logger.info("[3/%d] baselines for %d seed(s): pretrained, calibrated, each site alone per freeze spec, pooled",
                STAGES, len(repetitions))
    for repetition in repetitions:
        rows += run_baselines(repetition, at_size[repetition.seed][0], pretrained, tests, cross)
    runs = [(repetition, run) for repetition in repetitions
            for run in federation_runs(repetition, at_size[repetition.seed][0], pretrained)]
    held_out = []
    if config.leave_one_out and len(sites) < 3:
        logger.warning("leave-one-site-out needs at least 3 sites (a federation of 2 when one is left out); skipped")
    elif config.leave_one_out:
        held_out = [(r, site, run) for r in repetitions for site, run in
                    zip(at_size[r.seed][0], leave_one_out_runs(r, at_size[r.seed][0], pretrained))]
    return Plan(size, at_size, runs, rows, cross, held_out)


def score_held_out(config: SimConfig, plan: Plan, site: PreparedSite, run: SimulatedRun, done: FederationOutcome,
                   tests: dict[str, BoneAgeDataset]) -> list[Evaluation]:
    """The federation of the other sites on the held-out site's test split, as it is and under the held-out site's
    own sex-specific calibration (fitted on its training split)."""
    if done.failure:
        raise FederationFailed(f"{run.config.out_dir.name}: {done.failure}; no report written")
    loaded = load_checkpoint(done.final_checkpoint)
    name = without_site_name(config.strategy)
    rows = evaluate_everywhere(loaded.model, [site], tests, name, run.config.freeze, device_of(config))
    rows += federated_calibrated(config, [site], loaded.model, InputSettings.of(loaded).preprocess,
                                 run.config.freeze, {site.name: tests[site.name]}, name=name)
    for row in rows:
        row.extra.update(seed=config.seed, site_size=plan.size, n_train=plan.at_size[config.seed][1].get(site.name))
    return rows


def finish(config: SimConfig, plan: Plan, outcomes: list[FederationOutcome], tests: dict[str, BoneAgeDataset],
           outcome: Outcome) -> None:
    """Score the federated models of one comparison, fine-tune and calibrate them at each site, tag every row."""
    logger.info("[5/%d] federated models, then fine-tuned locally and calibrated at each site (freeze %s)", STAGES,
                config.baseline_freeze)
    rows, cross, at_size = plan.rows, plan.cross, plan.at_size
    for (repetition, run), done in zip(plan.runs, outcomes):
        fed = run.config
        seed_sites = at_size[repetition.seed][0]
        dp = any("dp-noise-multiplier" in node for node in run.sites)
        kept_local = fed.settings.local_layers != "none"
        if kept_local:
            fed_rows = evaluate_fedbn(done, run, seed_sites, tests, config.strategy, device_of(config), cross)
        else:
            fed_rows = evaluate_everywhere(load_checkpoint(done.final_checkpoint).model, seed_sites, tests,
                                           fed.out_dir.name if dp else config.strategy, fed.freeze, device_of(config))
            if not dp:
                cross += [replace(row, extra={"model_site": "federated", "seed": repetition.seed}) for row in fed_rows]
        epsilons = epsilon_by_site(done, seed_sites)
        options = format_options({k: float(v) for k, v in done.settings.items() if k in OPTIONS})
        for row in fed_rows:
            row.extra.update(seed=repetition.seed, epsilon=epsilons.get(row.site), strategy_options=options)
            if row.extra["epsilon"] is not None:
                outcome.privacy_points.append((row.site, row.extra["epsilon"], row.metrics["mad_months"]))
        rows += fed_rows
        if repetition.seed == config.seed:
            outcome.curves[fed.out_dir.name] = per_round_mad(done, seed_sites)
        if not dp and not kept_local and fed.freeze == config.baseline_freeze:
            rows += federated_then_local(repetition, seed_sites, done.final_checkpoint, fed.freeze, tests, cross)
    for row in [*rows, *cross]:
        row.extra.setdefault("seed", config.seed)
        row.extra["site_size"] = plan.size
        row.extra["n_train"] = at_size[row.extra["seed"]][1].get(row.extra.get("model_site", row.site))
    outcome.rows += rows
    outcome.cross += cross
