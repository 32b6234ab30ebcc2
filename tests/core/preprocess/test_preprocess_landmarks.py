"""The key-point localiser: boxes read, trained on phantom hands, points carried back to the input, qc.csv columns."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import read_image
from core.preprocess import Pose, PreprocessConfig, Preprocessor, apply_pose
from core.preprocess.folder import KEYPOINT_COLUMNS, preprocess_folder
from core.preprocess.landmarks import KEYPOINTS, Localiser, LocaliserNet, localiser_input, observed_points, save_localiser
from core.preprocess.landmarks_train import LocaliserTrainConfig, evaluate_localiser, read_boxes, train_localiser
from sim.phantom.writer import generate_site

BOX = 0.02  # half-side of the synthetic boxes (fractions)


def test_the_localiser_sees_the_whole_image_with_its_constant_bands() -> None:
    # Key points are fractions of the whole image: a black band (padding, a collimation mask) must not be cut from
    # the input, or every point the network finds is shifted (it was, from 6b98245 to this fix).
    image = np.zeros((100, 100), dtype=np.float32)
    image[:, 40:] = 0.3  # the film; columns 0-39 are a constant band
    image[48:52, 68:72] = 1.0  # a bright dot centred at x = 0.70, y = 0.50
    x = localiser_input(image, 64)
    y, x_found = np.unravel_index(np.argmax(x), x.shape)
    assert (x_found + 0.5) / 64 == pytest.approx(0.70, abs=0.03)
    assert (y + 0.5) / 64 == pytest.approx(0.50, abs=0.03)
    assert x.min() == 0.0 and x.max() == pytest.approx(1.0)


@pytest.mark.parametrize("pose", [Pose(), Pose(1), Pose(2, True), Pose(3, False, True), Pose(0, True, False, 12.0),
                                  Pose(1, True, False, -8.0)])
def test_points_found_on_the_canonical_image_land_on_the_same_spot_of_the_input(pose: Pose) -> None:
    canonical = np.zeros((60, 80), dtype=np.float32)
    canonical[14:17, 49:52] = 1.0  # a bright dot centred at pixel (50, 15)
    observed = apply_pose(canonical, pose)
    y, x = np.unravel_index(np.argmax(1.0 - observed if pose.inverted else observed), observed.shape)
    found = observed_points(np.array([[50.5 / 80, 15.5 / 60]]), pose, canonical.shape)[0]
    assert found * [observed.shape[1], observed.shape[0]] == pytest.approx([x + 0.5, y + 0.5], abs=1.5)


def _phantom_boxes(site: Path, out: Path, second_reader_shift: float = 0.0) -> Path:
    """Boxes from the phantom's key points: wrist at the capitate, radius at the thumb tip, ulna at the middle
    finger's tip, five MCP boxes across the palm (the third one halfway between capitate and tip)."""
    side = read_image(next((site / "images").iterdir())).shape[1]
    rows = []
    with open(site / "keypoints.csv", newline="") as handle:
        for i, row in enumerate(csv.DictReader(handle)):
            p = {k: float(v) / side for k, v in row.items() if k != "id"}
            mid = ((p["capitate_x"] + p["third_tip_x"]) / 2, (p["capitate_y"] + p["third_tip_y"]) / 2)
            centres = [("Wrist", p["capitate_x"], p["capitate_y"]), ("Radius", p["thumb_tip_x"], p["thumb_tip_y"]),
                       ("Ulna", p["third_tip_x"], p["third_tip_y"])]
            centres += [("MCP", mid[0] + dx, mid[1]) for dx in (-0.3, -0.15, 0.0, 0.15, 0.3)]
            annotations = ["train"] if i >= 6 else ["eval-expert", "eval-nonexpert"]
            for annotation in annotations:
                shift = second_reader_shift if annotation == "eval-nonexpert" else 0.0
                rows += [[row["id"], annotation, label, side, side, x - BOX + shift, y - BOX, x + BOX + shift, y + BOX]
                         for label, x, y in centres]
    path = out / "boxes.csv"
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([["id", "annotation", "label", "width", "height", "x0", "y0", "x1", "y1"],
                                      *rows])
    return path


@pytest.fixture(scope="module")
def annotated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("localiser")
    site = generate_site("rsna", 30, root / "site", seed=8, image_size=64)
    return site, _phantom_boxes(site, root, second_reader_shift=0.01)


def test_boxes_become_centres_with_the_third_mcp_from_the_left(annotated) -> None:
    site, boxes = annotated
    points = read_boxes(boxes)
    assert set(points) == {"train", "eval-expert", "eval-nonexpert"} and len(points["train"]) == 24
    first = next(iter(points["eval-expert"]))
    expert, second = points["eval-expert"][first], points["eval-nonexpert"][first]
    assert expert.shape == (len(KEYPOINTS), 2)
    assert second[:, 0] - expert[:, 0] == pytest.approx([0.01] * len(KEYPOINTS))
    with open(site / "keypoints.csv", newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["id"] == first)
    capitate_x, tip_x = float(row["capitate_x"]) / 64, float(row["third_tip_x"]) / 64
    assert expert[KEYPOINTS.index("mcp3"), 0] == pytest.approx((capitate_x + tip_x) / 2, abs=1e-6)


def test_training_learns_the_key_points_and_reports_the_reader_spread(annotated, tmp_path: Path) -> None:
    site, boxes = annotated
    config = LocaliserTrainConfig(steps=60, batch_size=8, size=32, width=8, lr=5e-3)
    metadata = train_localiser(site, boxes, tmp_path / "loc.pt", config)
    held_out = metadata["held_out"]
    assert held_out["n_images"] == 6
    trained = Localiser.load(tmp_path / "loc.pt")
    untrained = evaluate_localiser(Localiser(LocaliserNet(32, 8), {}), site, read_boxes(boxes))
    for name in KEYPOINTS:
        assert held_out[name]["second_reader"]["mean"] == pytest.approx(0.01, abs=1e-4)  # the shift we drew
        assert held_out[name]["n_twice_read"] == 6
    mean = np.mean([held_out[name]["localiser"]["mean"] for name in KEYPOINTS])
    assert mean < 0.5 * np.mean([untrained[name]["localiser"]["mean"] for name in KEYPOINTS])
    registered, unregistered = held_out["registration"], untrained["registration"]
    assert registered["localiser"]["mean"] < 0.5 * unregistered["localiser"]["mean"]
    assert registered["second_reader"]["mean"] > 0.0  # a reader 0.01 to the right registers slightly off
    assert trained.predict(np.random.default_rng(0).random((50, 70), dtype=np.float32)).shape == (len(KEYPOINTS), 2)


def test_qc_csv_carries_the_key_points_in_the_input_frame_and_blanks_refused_rows(annotated, tmp_path: Path) -> None:
    site, _ = annotated
    localiser = save_localiser(tmp_path / "loc.pt", LocaliserNet(32, 8), {})
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    image = read_image(next((site / "images").iterdir()))
    for name, pose in (("upright", Pose()), ("turned", Pose(1))):
        Image.fromarray(np.rint(apply_pose(image, pose) * 255).astype(np.uint8)).save(data / "images" / f"{name}.png")
    Image.fromarray(np.full((20, 20), 128, dtype=np.uint8)).save(data / "images" / "tiny.png")  # refused
    settings = PreprocessConfig(localiser=str(localiser), site_check=False, small_angle=False)
    preprocess_folder(data, tmp_path / "out", Preprocessor(settings))
    with open(tmp_path / "out" / "qc.csv", newline="") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    assert all(rows["tiny"][column] == "" for column in KEYPOINT_COLUMNS) and rows["tiny"]["refused"]
    upright = Preprocessor(settings)(image)
    for name in KEYPOINTS:
        assert float(rows["upright"][f"{name}_x"]) == pytest.approx(upright.keypoints[name][0], abs=1e-4)
        assert 0.0 <= float(rows["turned"][f"{name}_y"]) <= 1.0
    assert Preprocessor(settings)(apply_pose(image, Pose(1))).pose == Pose(1)  # the turn is undone exactly
    # a quarter turn anticlockwise: the upright image's x is 1 - y of the turned one, its y the turned one's x
    assert 1.0 - float(rows["turned"]["wrist_y"]) == pytest.approx(upright.keypoints["wrist"][0], abs=1e-3)
    assert float(rows["turned"]["wrist_x"]) == pytest.approx(upright.keypoints["wrist"][1], abs=1e-3)
    assert Preprocessor(PreprocessConfig(site_check=False))(image).keypoints == {}  # no localiser, no key points


class _FixedPoints:
    """A localiser that finds the same points on every image (fractions, in KEYPOINTS order)."""

    def __init__(self, points: dict[str, tuple[float, float]]) -> None:
        self.points = np.array([points[name] for name in KEYPOINTS])

    def predict(self, image: np.ndarray) -> np.ndarray:
        return self.points


def _localised(tmp_path: Path, points: dict[str, tuple[float, float]], **settings) -> Preprocessor:
    localiser = save_localiser(tmp_path / "loc.pt", LocaliserNet(32, 8), {})
    preprocessor = Preprocessor(PreprocessConfig(localiser=str(localiser), canonical=False, equalize=False,
                                                 decollimate=False, inpaint_markers=False, **settings))
    preprocessor._localiser = _FixedPoints(points)
    return preprocessor


def test_registration_on_learned_key_points_puts_the_wrist_and_third_mcp_in_place(tmp_path: Path) -> None:
    from core.preprocess.register import MCP3_Y, WRIST_Y

    image = np.zeros((100, 80), dtype=np.float32)  # no hand a threshold could find: the localiser needs none
    # (the bright squares would pass for burned-in markers: the settings leave them, see _localised)
    image[39:42, 29:32], image[84:87, 39:42] = 1.0, 0.6  # the "MCP3" at (30.5, 40.5), the "wrist" at (40.5, 85.5)
    points = {"mcp3": (30.5 / 80, 40.5 / 100), "wrist": (40.5 / 80, 85.5 / 100), "radius": (0.5, 0.9),
              "ulna": (0.4, 0.9)}
    result = _localised(tmp_path, points, register=True, output_size=64)(image)
    assert result.refused is None and "registration_failed" not in result.flags
    top = np.unravel_index(np.argmax(np.where(result.image > 0.8, result.image, 0)), result.image.shape)
    bottom = np.unravel_index(np.argmax(np.where((result.image > 0.3) & (result.image < 0.8), 1, 0)),
                              result.image.shape)
    assert top == pytest.approx((MCP3_Y * 64, 32), abs=2.5)
    assert bottom == pytest.approx((WRIST_Y * 64, 32), abs=2.5)


def test_implausible_learned_key_points_fail_registration_and_a_region_model_refuses(tmp_path: Path) -> None:
    image = np.random.default_rng(0).random((100, 80), dtype=np.float32)
    upside_down = {"mcp3": (0.5, 0.8), "wrist": (0.5, 0.3), "radius": (0.5, 0.9), "ulna": (0.4, 0.9)}
    result = _localised(tmp_path, upside_down, register=True, region="carpal")(image)
    assert "registration_failed" in result.flags and result.refused.startswith("registration failed")
    too_close = {"mcp3": (0.5, 0.5), "wrist": (0.5, 0.55), "radius": (0.5, 0.9), "ulna": (0.4, 0.9)}
    assert "registration_failed" in _localised(tmp_path, too_close, register=True)(image).flags
