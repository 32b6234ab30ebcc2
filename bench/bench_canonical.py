"""Does preprocessing keep correct images correct, and bring posed copies back? (issue 23, section 1)

    python -m bench.bench_canonical --data DIR [--preprocess SPEC] [--seed 0] [--json]

DIR holds clean radiographs in the canonical pose (left hand, fingers up, bone bright), e.g. real images none of the
shipped weights saw. The preprocessing is resolved for the folder exactly as ``python -m client preprocess`` does
(the orientation self-check on the folder's own images and, when the packaged model fails it, the fit on them).
Then every image is preprocessed as it is and as each of its 15 posed copies (3 quarter turns, mirrored, inverted
and their combinations). Per image: the clean copy "keeps its pose" when it is not refused and the pose undone is
the identity (small angles aside); a posed copy "comes back" when the pose undone composed with the pose applied is
the identity, or when it is refused. Targets: >= 98 % of clean images keep their pose, <= 1 % refused, >= 95 % of
copies come back or are refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path

from core.cli import add_shared_options, run_command, setup_logging
from core.data import ImageError, read_image
from core.preprocess import Pose, PreprocessConfig, Preprocessor, apply_pose
from core.preprocess.folder import image_paths
from core.preprocess.site import orientation_for_site, same_image

logger = logging.getLogger("bench.canonical")

# every turn, mirror and inversion but the identity
COPIES = tuple(Pose(turns, mirrored, inverted) for inverted in (False, True) for mirrored in (False, True)
               for turns in range(4) if turns or mirrored or inverted)


def pose_name(pose: Pose) -> str:
    parts = [f"turn{90 * pose.quarter_turns}"] if pose.quarter_turns else []
    parts += ["mirror"] * pose.mirrored + ["invert"] * pose.inverted
    return "+".join(parts) or "identity"


def is_identity(applied: Pose, undone: Pose) -> bool:
    """Whether undoing `undone` after applying `applied` gives back the image (turns, mirroring, polarity)."""
    return same_image((applied, undone), (Pose(), Pose()))


def run(data: Path, spec: str, seed: int) -> dict[str, object]:
    config = PreprocessConfig.parse(spec) or PreprocessConfig(canonical=False)
    paths = image_paths(data)
    config, site = orientation_for_site(config, paths, seed=seed)
    preprocessor = Preprocessor(config)
    kept, refused_clean, n = 0, 0, 0
    came_back, refused_copies = Counter(), Counter()
    wrong: Counter = Counter()
    for path in paths:
        try:
            image = read_image(path)
        except ImageError as exc:
            logger.warning("skipped %s", exc)
            continue
        n += 1
        clean = preprocessor(image)
        refused_clean += clean.refused is not None
        kept += clean.refused is None and is_identity(Pose(), clean.pose)
        if clean.refused is None and not is_identity(Pose(), clean.pose):
            wrong[pose_name(clean.pose)] += 1
        for pose in COPIES:
            result = preprocessor(apply_pose(image, pose))
            name = pose_name(pose)
            refused_copies[name] += result.refused is not None
            came_back[name] += result.refused is not None or is_identity(pose, result.pose)
    copies = n * len(COPIES)
    return {"data": str(data), "n": n, "settings": config.to_dict(), "site_check": site,
            "clean_kept_pose": kept / n, "clean_refused": refused_clean / n,
            "clean_wrong_pose": dict(wrong),
            "copies_back_or_refused": sum(came_back.values()) / copies,
            "copies_refused": sum(refused_copies.values()) / copies,
            "per_copy": {name: {"back_or_refused": came_back[name] / n, "refused": refused_copies[name] / n}
                         for name in came_back}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_canonical", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of clean, canonical radiographs")
    parser.add_argument("--preprocess", default="default", help="none, default or default,key=value,...")
    add_shared_options(parser, "seed", "json")
    args = parser.parse_args(argv)
    setup_logging()
    return run_command(_report, args)


def _report(args: argparse.Namespace) -> int:
    result = run(args.data, args.preprocess, args.seed)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['n']} clean images: kept their pose {result['clean_kept_pose']:.1%}, refused "
          f"{result['clean_refused']:.1%}, wrong pose {result['clean_wrong_pose']}")
    print(f"posed copies back or refused {result['copies_back_or_refused']:.1%} (refused "
          f"{result['copies_refused']:.1%})")
    for name, cell in result["per_copy"].items():
        print(f"  {name:22s} back or refused {cell['back_or_refused']:.1%}  refused {cell['refused']:.1%}")
    print(f"site check: {result['site_check']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
