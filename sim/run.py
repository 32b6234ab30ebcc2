"""`python -m sim` end to end: sites, pretraining, baselines, federations (all seeds in one engine session),
federated-then-local fine-tuning, statistics and report."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace

from core.checkpoint import load_checkpoint
from core.errors import FederationFailed
from core.preprocess import preprocess_config_of
from sim.baselines import federated_then_local, run_baselines, seeded
from sim.config import SimConfig
from sim.experiment import (Evaluation, device_of, epsilon_by_site, evaluate_everywhere, evaluate_fedbn,
                            federation_runs, load_test_splits, per_round_mad)
from sim.federation import run_federations
from sim.report import write_report
from sim.sites import prepare_sites, pretrained_model
from strategies.options import OPTIONS, format_options

logger = logging.getLogger("ossifl.sim")


def run_experiment(config: SimConfig) -> list[Evaluation]:
    """Run the whole comparison and write results.csv, report.md and the plots to `out_dir`."""
    started = time.perf_counter()
    config.out_dir.mkdir(parents=True, exist_ok=True)
    stages = 6
    logger.info("[1/%d] sites", stages)
    source, sites = prepare_sites(config)
    logger.info("[2/%d] pretrained source model", stages)
    pretrained = pretrained_model(config, source)
    loaded = load_checkpoint(pretrained)
    model_config = loaded.model.config
    config = replace(config, image_size=model_config.image_size, width=model_config.width)
    (config.out_dir / "config.json").write_text(json.dumps({**config.to_dict(), "pretrained": str(pretrained)},
                                                           indent=2))
    tests = load_test_splits(sites, config.image_size, preprocess_config_of(loaded.metadata))
    repetitions = [seeded(config, seed) for seed in config.seed_list()]
    logger.info("[3/%d] baselines for %d seed(s): pretrained, calibrated, each site alone per freeze spec, pooled",
                stages, len(repetitions))
    rows: list[Evaluation] = []
    for repetition in repetitions:
        rows += run_baselines(repetition, sites, pretrained, tests)
    runs = [(repetition, run) for repetition in repetitions for run in federation_runs(repetition, sites, pretrained)]
    logger.info("[4/%d] %d federated runs of %d rounds on %d sites (FedBN among them), one engine session", stages,
                len(runs), config.rounds, len(sites))
    outcomes = run_federations([run for _, run in runs])
    failed = [f"{run.config.out_dir.name}: {outcome.failure}" for (_, run), outcome in zip(runs, outcomes)
              if outcome.failure]
    if failed:  # a comparison with a run that never trained would report it as if it had
        raise FederationFailed(f"{len(failed)} of {len(runs)} federated runs failed, no report written: "
                               f"{' | '.join(failed)}")
    logger.info("[5/%d] federated models, then fine-tuned locally at each site (freeze %s)", stages,
                config.baseline_freeze)
    curves: dict[str, dict[str, list[float]]] = {}
    privacy_points: list[tuple[str, float, float]] = []
    for (repetition, run), outcome in zip(runs, outcomes):
        fed = run.config
        dp = any("dp-noise-multiplier" in node for node in run.sites)
        fedbn = fed.settings.local_layers != "none"
        if fedbn:
            fed_rows = evaluate_fedbn(outcome, run, sites, tests, config.strategy, device_of(config))
        else:
            fed_rows = evaluate_everywhere(load_checkpoint(outcome.final_checkpoint).model, sites, tests,
                                           fed.out_dir.name if dp else config.strategy, fed.freeze, device_of(config))
        epsilons = epsilon_by_site(outcome, sites)
        options = format_options({k: float(v) for k, v in outcome.settings.items() if k in OPTIONS})
        for row in fed_rows:
            row.extra.update(seed=repetition.seed, epsilon=epsilons.get(row.site), strategy_options=options)
            if row.extra["epsilon"] is not None:
                privacy_points.append((row.site, row.extra["epsilon"], row.metrics["mad_months"]))
        rows += fed_rows
        if repetition.seed == config.seed:
            curves[fed.out_dir.name] = per_round_mad(outcome, sites)
        if not dp and not fedbn and fed.freeze == config.baseline_freeze:
            rows += federated_then_local(repetition, sites, outcome.final_checkpoint, fed.freeze, tests)
    logger.info("[6/%d] report", stages)
    seconds = time.perf_counter() - started
    summary = write_report(config, rows, curves, privacy_points, seconds)
    logger.info("results in %s (results.csv, report.md, plots); total %.1f min", config.out_dir, seconds / 60)
    print("\n" + summary)
    return rows

