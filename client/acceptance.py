"""Acceptance at the site: the site's thresholds from its node config, the verdict in its audit log, and the
verdict `predict` looks up by the model's SHA-256.

The keys live in the same `site.toml` the SuperNode reads (`deploy/site.toml`): `state-dir` (where `audit.jsonl`
is), `require-acceptance` (predict refuses a model this site has not accepted) and the `accept-*` thresholds of
`core.stages.acceptance.AcceptancePolicy`. The latest verdict on a SHA-256 wins: a model rejected after it was accepted is
no longer accepted.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from client.audit import AUDIT_FILENAME, append_audit
from client.config import SiteConfigError, state_dir_of
from core.stages.acceptance import AcceptancePolicy, Verdict
from core.errors import ConfigError, UserError
from core.schema import Schema, Setting, to_bool, to_int

ACCEPTANCE_EVENT = "model_acceptance"
_POLICY = AcceptancePolicy()
# The node config keys of acceptance (`deploy/site.toml`); the thresholds' defaults are AcceptancePolicy's.
ACCEPT_SCHEMA = Schema(
    Setting("require", to_bool, False, "predict refuses a model this site has not accepted",
            node_key="require-acceptance"),
    Setting("margin_months", float, _POLICY.margin_months, "the new model's MAD may exceed the current one's by "
            "at most this much, with 95 % confidence", node_key="accept-margin-months"),
    Setting("max_refused_share", float, _POLICY.max_refused_share, "largest share of the split the quality gate "
            "may refuse", node_key="accept-max-refused"),
    Setting("pose_images", to_int, _POLICY.pose_images, "images turned, mirrored and inverted",
            node_key="accept-pose-images"),
    Setting("pose_tolerance_months", float, _POLICY.pose_tolerance_months, "a turned, mirrored or inverted copy "
            "read more than this far from its upright image has moved", node_key="accept-pose-tolerance-months"),
    Setting("max_pose_moved_share", float, _POLICY.max_pose_moved_share, "largest share of the images whose copy "
            "moved, per pose", node_key="accept-max-pose-moved"),
)

RETIRED_POSE_KEY = "accept-max-pose-change-months"


class NotAcceptedError(UserError):
    """The site requires acceptance and this model has not been accepted here."""


@dataclass(frozen=True)
class SiteAcceptance:
    """What acceptance needs from a site's settings."""

    state_dir: Path | None
    require: bool = False
    policy: AcceptancePolicy = AcceptancePolicy()


def read_site_config(path: Path) -> dict[str, Any]:
    """The flat keys of a site's node config file (site.toml)."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SiteConfigError(f"cannot read the site config {path}: {exc}") from None


def site_acceptance(site_config: Path | None, state_dir: Path | None, data: Path | None = None) -> SiteAcceptance:
    """Settings from `--site-config` (its keys) and `--state-dir` (wins over the config's `state-dir`); without
    either, the state folder a SuperNode serving `data` would use by default (None when `data` is not given)."""
    node: Mapping[str, Any] = read_site_config(site_config) if site_config is not None else {}
    if RETIRED_POSE_KEY in node:
        raise SiteConfigError(f"{site_config}: {RETIRED_POSE_KEY} (a limit on the mean change) is retired: the pose "
                              "check now counts the copies that moved (accept-pose-tolerance-months, "
                              "accept-max-pose-moved; docs/prediction.md)")
    try:
        values = ACCEPT_SCHEMA.read(node, "node")
    except ConfigError as exc:
        raise SiteConfigError(f"{site_config}: {exc}") from None
    require = values.pop("require", ACCEPT_SCHEMA.default("require"))
    known = {"data-path": str(data), **node} if data is not None else dict(node)
    if state_dir is None and any(key in known for key in ("state-dir", "site-id", "data-path")):
        state_dir = state_dir_of(known)
    return SiteAcceptance(state_dir, require, AcceptancePolicy(**values))


def record_verdict(state_dir: Path, verdict: Verdict, model: Path, data: Path, against: Path | None) -> None:
    """Append the verdict with its figures to the site's audit log."""
    append_audit(state_dir, {"event": ACCEPTANCE_EVENT, "model_file": str(Path(model).resolve()),
                             "against_file": None if against is None else str(Path(against).resolve()),
                             "data": str(Path(data).resolve()), **verdict.to_dict()})


def latest_verdict(state_dir: Path, sha256: str) -> dict[str, Any] | None:
    """The site's latest acceptance entry for this SHA-256 (None when the model was never checked here)."""
    path = Path(state_dir) / AUDIT_FILENAME
    if not path.is_file():
        return None
    found = None
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if ACCEPTANCE_EVENT not in line:
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("event") == ACCEPTANCE_EVENT and entry.get("model_sha256") == sha256:
                found = entry
    return found


def acceptance_status(site: SiteAcceptance, sha256: str, model: Path) -> str:
    """One line for predict's output ("accepted at this site 2026-...Z", ...); raises `NotAcceptedError` when the
    site requires acceptance and the latest verdict is not an acceptance."""
    if site.state_dir is None:
        if site.require:
            raise NotAcceptedError("this site requires acceptance but its config names no state-dir to find it in")
        return "not checked: no site given (--site-config or --state-dir)"
    entry = latest_verdict(site.state_dir, sha256)
    if entry is not None and entry.get("accepted") is True:
        return f"accepted at this site {entry['time']}"
    status = "never checked at this site" if entry is None else \
        f"rejected at this site {entry['time']}: {entry.get('reason', '')}"
    if site.require:
        raise NotAcceptedError(f"{model} is {status.replace('never', 'not')}; this site requires acceptance "
                               f"(python -m client accept --model {model} --data SITE)")
    return status
