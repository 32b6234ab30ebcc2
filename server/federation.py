"""One federated run: start from the pretrained model, send the shared arrays, aggregate,
evaluate every round, checkpoint the merged model every round, resume after a crash; optionally
under central (client-level) DP, stopping cleanly when its budget is reached. A round in which no
site trained fails the run: no final model is written. The server keeps its own record of every
private site's epsilon (`server.site_privacy`) in the per-round checkpoint."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.exception import PrivacyBudgetExhausted

from core.train.evaluation import evaluate_model
from core.checkpoint import describe, file_sha256, load_checkpoint, save_checkpoint
from core.data import BoneAgeDataset, SiteDataConfig, load_site
from core.errors import ConfigError, ResumeMismatch
from core.model.groups import parameter_groups, set_trainable
from core.inputs import InputSettings
from core.preprocess import PreprocessConfig
from core.train.training import resolve_device
from server.central_dp import AccountedFixedClipping, wrap_central_dp
from server.config import FederationConfig
from server.interval import federated_interval, refit_interval
from server.outcome import FederationOutcome
from server.site_privacy import SitePrivacyRecord
from server.tracking import MetricsTracker
from strategies import NoSiteTrained, PartialModelStrategy, build_strategy
from strategies.options import applied_options

logger = logging.getLogger("ossifl.server")

LATEST = "federated_latest.pt"
FINAL = "federated_final.pt"


class Federation:
    """The state of one run between rounds: the merged model, the strategy, the tracker."""

    def __init__(self, config: FederationConfig) -> None:
        self.config = config
        pretrained = load_checkpoint(config.pretrained)
        self.model = pretrained.model
        # every image this model sees is preprocessed alike; its checkpoints record the pretrained model's TTA too
        self.inherited = InputSettings.of(pretrained).inherited()
        set_trainable(self.model, config.settings.freeze)
        self.keys = list(parameter_groups(self.model, config.settings.freeze, config.settings.local_layers).shared)
        self.latest = config.out_dir / LATEST
        self.start_round = 0
        self.site_privacy = SitePrivacyRecord()
        self.federation_id = uuid.uuid4().hex  # sent to the sites; a resume keeps it, so they keep their own layers
        strategy_state, accountant_state = self._resume() if config.resume and self.latest.exists() else (None, None)
        self.tracker = MetricsTracker(config.out_dir, config.wandb,
                                      run_name=f"{config.strategy}-freeze{config.freeze}", config=config.describe())
        self.strategy: PartialModelStrategy = build_strategy(
            config.strategy, round_offset=self.start_round, on_site_reports=self.tracker.site_reports,
            min_nodes=config.min_nodes, fraction_evaluate=config.fraction_evaluate,
            reply_check=self.site_privacy.check, **config.aggregator_options())
        # what the checkpoints and the outcome record: the settings, with the options the aggregator applies
        self.applied = {**config.describe(), **{k: str(v) for k, v in applied_options(self.strategy.aggregator).items()}}
        if strategy_state is not None:
            self.strategy.load_state_dict(strategy_state)
        self.private: AccountedFixedClipping | None = None
        if config.central_dp:
            self.private = wrap_central_dp(self.strategy, config, self.model, self.keys, accountant_state)
        self.rounds_done = self.start_round
        inputs = InputSettings.of(pretrained)
        self.central = _central_set(config, inputs.image_size, inputs.preprocess)
        self.device = resolve_device(config.device)
        self._last_merge = time.perf_counter()

    def _resume(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Load the last per-round checkpoint; refuse one written under different settings."""
        resumed = load_checkpoint(self.latest)
        differences = self.config.resume_differences(resumed.metadata.get("run_config", {}))
        if differences:
            raise ResumeMismatch(f"cannot resume {self.latest} under a different run config "
                                 f"({'; '.join(differences)}); "
                                 "start a new out-dir or resume with the original settings")
        self.model.load_state_dict(resumed.model.state_dict())
        self.start_round = int(resumed.metadata["round"])
        self.site_privacy = SitePrivacyRecord(resumed.metadata.get("site_privacy"))
        self.federation_id = str(resumed.metadata.get("federation_id") or self.federation_id)
        accountant_state = resumed.metadata.get("central_dp_state")
        if self.config.central_dp and accountant_state is None:
            raise ConfigError(f"cannot resume under central DP: {self.latest} has no accountant state "
                              "(the rounds before it ran without central DP)")
        logger.info("resuming after round %d from %s", self.start_round, self.latest)
        return resumed.metadata.get("strategy_state"), accountant_state

    def merge(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's `evaluate_fn`: take the merged arrays, evaluate centrally, time the round, checkpoint."""
        real_round = server_round + self.start_round
        if server_round > 0:  # since the last merge: the previous round's evaluation, this round's training
            self.tracker.round_timing(real_round, time.perf_counter() - self._last_merge)
        self.model.load_state_dict(arrays.to_torch_state_dict(), strict=False)
        metrics = self._evaluate_centrally(real_round)
        if server_round > 0:
            self.rounds_done = real_round
            self._checkpoint(real_round)
        self._last_merge = time.perf_counter()
        return MetricRecord(metrics) if metrics else None

    def _evaluate_centrally(self, real_round: int) -> dict[str, float]:
        if self.central is None:
            return {}
        result = evaluate_model(self.model, self.central, self.device, self.config.central_label_unit)
        metrics = {k: float(v) for k, v in result.items() if isinstance(v, (int, float))}
        self.tracker.central(real_round, metrics)
        logger.info("round %d: central MAD %.2f months", real_round, metrics["mad_months"])
        return metrics

    def _checkpoint(self, real_round: int) -> None:
        dp_meta: dict[str, Any] = {}
        if self.private is not None:
            self.tracker.central(real_round, {"central-epsilon": self.private.epsilon()})
            dp_meta["central_dp_state"] = self.private.accountant_state()
        save_checkpoint(self.latest, self.model, describe(
            self.model, round=real_round, strategy=self.config.strategy, strategy_state=self.strategy.state_dict(),
            seed=self.config.settings.seed, run_config=self.applied, **self.inherited,
            site_privacy=self.site_privacy.state_dict(), federation_id=self.federation_id, **dp_meta))

    def run(self, grid: Grid) -> FederationOutcome:
        """Run the remaining rounds and save the final model."""
        sha256 = file_sha256(self.config.pretrained)
        site_config = ConfigRecord({**self.config.message_settings(sha256).to_config(),
                                    "federation-id": self.federation_id})
        initial = ArrayRecord({k: self.model.state_dict()[k] for k in self.keys})
        remaining = self.config.num_rounds - self.start_round
        try:
            if remaining > 0:
                runner = self.strategy if self.private is None else self.private
                runner.start(grid=grid, initial_arrays=initial, num_rounds=remaining, timeout=self.config.timeout,
                             train_config=site_config, evaluate_config=site_config, evaluate_fn=self.merge)
        except PrivacyBudgetExhausted as exc:
            logger.warning("central DP budget reached after round %d: stopping; the model of round %d is kept (%s)",
                           self.rounds_done, self.rounds_done, exc)
        except NoSiteTrained as exc:
            return self._fail(str(exc))
        finally:
            self.tracker.close()
        interval = {}
        if self.config.interval and self.rounds_done > 0:
            site_config["server-round"] = self.rounds_done
            shared = ArrayRecord({k: self.model.state_dict()[k] for k in self.keys})
            interval = federated_interval(grid, shared, site_config, self.config.timeout)
        return self._finish(interval)

    def _fail(self, reason: str) -> FederationOutcome:
        """The run stops: no final model (the last merged round, if any, stays in federated_latest.pt)."""
        kept = f"{LATEST} holds round {self.rounds_done}" if self.rounds_done else "no round was merged"
        failure = f"{reason}; the run stops without a final model ({kept})"
        logger.error("federation failed: %s", failure)
        rounds = [self.tracker.rounds[r] for r in sorted(self.tracker.rounds)]
        return FederationOutcome(None, self.rounds_done, self.keys, 0, self.applied, rounds,
                                 failure=failure)

    def _finish(self, interval: dict[str, Any]) -> FederationOutcome:
        config = self.config
        final = config.out_dir / FINAL
        epsilon = None if self.private is None else self.private.epsilon()
        dp_meta = {} if epsilon is None else {"central_epsilon": epsilon, "central_delta": config.central_dp_delta}
        save_checkpoint(final, self.model, describe(self.model, round=self.rounds_done, strategy=config.strategy,
                                                    seed=config.settings.seed, pretrained=str(config.pretrained),
                                                    pretrained_sha256=file_sha256(config.pretrained),
                                                    federation_id=self.federation_id,
                                                    run_config=self.applied, **self.inherited,
                                                    **dp_meta, **interval))
        shared = set(self.keys)
        nbytes = sum(v.numel() * v.element_size() for k, v in self.model.state_dict().items() if k in shared)
        logger.info("federation done: %d rounds, %d arrays (%.1f kB) per site and round, final model %s%s",
                    self.rounds_done, len(self.keys), nbytes / 1024, final,
                    "" if epsilon is None else f", central epsilon {epsilon:.3f}")
        rounds = [self.tracker.rounds[r] for r in sorted(self.tracker.rounds)]
        return FederationOutcome(final, self.rounds_done, self.keys, nbytes, self.applied, rounds, epsilon)


def run_federation(grid: Grid, config: FederationConfig) -> FederationOutcome:
    """Run `config.num_rounds` rounds (fewer when resuming) and save the merged model.

    A failed run (a round in which no site trained) returns an outcome with `failure` set and no final model.
    With `interval-from`, no round is trained: only that federated model's interval is fitted across the sites.
    """
    if config.interval_from is not None:
        return refit_interval(grid, config, FINAL)
    return Federation(config).run(grid)


def _central_set(config: FederationConfig, image_size: int,
                 preprocess: PreprocessConfig | None) -> BoneAgeDataset | None:
    """The test split of the central set the server evaluates every round, if one is given."""
    if config.central_data is None:
        return None
    data = load_site(SiteDataConfig(root=config.central_data, label_unit=config.central_label_unit),
                     image_size, None, seed=0, splits=("test",), preprocess=preprocess)
    return data.test
