"""One self-contained HTML page per patient (images embedded as data URIs, no external files or scripts).

Each image of the patient gets: the radiograph as the model saw it (after preprocessing), the heat map over
it, bone age with its interval, chronological age and BA - CA, the sex used and its source and the quality
flags. Then the model's identity and training history, and the statement that a clinician must review it.

No standard deviation score: an SDS needs the standard deviation of bone age for the child's age and sex
from a reference population (e.g. Greulich-Pyle's own tables) and OssiFL ships no such table, so the
difference is given in months and years only (docs/prediction.md).
"""

from __future__ import annotations

import base64
import html
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from client.reading import years_months

logger = logging.getLogger(__name__)

DISPLAY_SIZE = 384  # side of the pictures in a report

REVIEW_STATEMENT = ("This bone age was estimated by software. It is not a diagnosis: a qualified clinician must "
                    "review the radiograph and this result before it is used for any clinical decision.")
NO_SDS = ("No standard deviation score is given: OssiFL has no cited reference table of bone-age spread by age "
          "and sex, so BA - CA is shown in months and years only.")

_STYLE = """
body{font-family:system-ui,Arial,sans-serif;margin:24px;color:#111;background:#fff;max-width:1000px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:20px 0 6px}
.review{border:2px solid #b00;background:#fff3f3;padding:10px 14px;margin:12px 0;font-weight:600}
.image{border:1px solid #ccc;border-radius:6px;padding:12px;margin:14px 0}
.pics{display:flex;gap:12px;flex-wrap:wrap} figure{margin:0} figcaption{font-size:12px;color:#444}
img{width:300px;height:300px;image-rendering:auto;background:#000}
table{border-collapse:collapse;font-size:14px} td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}
th{color:#333;font-weight:600;width:230px} .big{font-size:20px;font-weight:700}
.refused{color:#b00;font-weight:700} .flags{color:#8a5a00} .small{font-size:12px;color:#555}
"""


@dataclass(frozen=True)
class ImageSection:
    """One image of a report: its output row and PNGs (None for an image that was refused), all DISPLAY_SIZE px."""

    row: dict[str, Any]
    radiograph_png: bytes | None
    heatmap_png: bytes | None
    model_input_png: bytes | None = None  # the square the model read, enlarged without smoothing


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _rows(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in pairs)


def _image_html(section: ImageSection, input_px: int) -> str:
    row = section.row
    name = html.escape(Path(row["image"]).name)
    if row["status"] != "ok":
        return (f'<div class="image"><h2>{name}</h2><p class="refused">Not assessed: '
                f'{html.escape(str(row["reason"]))}</p></div>')
    pictures = _pictures(section, input_px)
    age = "not known"
    if row["chronological_age_months"] != "":
        age = (f"{html.escape(row['chronological_age'])} ({row['chronological_age_months']} months; "
               f"{html.escape(row['chronological_age_source'])})")
    reading = _both_sexes(row) if row["sex"] == "unknown" else _one_sex(row)
    flags = html.escape(row["quality_flags"]) or "none"
    table = _rows([
        *reading,
        ("Chronological age", age),
        ("Sex used", f"{html.escape(row['sex'])} ({html.escape(row['sex_source'])})"),
        ("Quality flags", f'<span class="flags">{flags}</span>'),
        ("Preprocessing", html.escape(str(row.get("preprocessing", "")))),
    ])
    return f'<div class="image"><h2>{name}</h2>{pictures}<table>{table}</table></div>'


def _figure(png: bytes, alt: str, caption: str) -> str:
    return f'<figure><img alt="{alt}" src="{_data_uri(png)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def _pictures(section: ImageSection, input_px: int) -> str:
    """What the model saw (at its input size), the film as preprocessed at display size, and the heat map."""
    if section.radiograph_png is None or section.heatmap_png is None:
        return ""
    cells = max(1, input_px // 16)
    figures = []
    if section.model_input_png is not None:
        figures.append(_figure(section.model_input_png, "model input",
                               f"what the model saw: {input_px} x {input_px} px, enlarged to {DISPLAY_SIZE} px "
                               "without smoothing"))
    as_read = "as stored" if str(section.row.get("preprocessing", "")).startswith("none") else "as preprocessed"
    figures.append(_figure(section.radiograph_png, "radiograph",
                           f"the film {as_read}, shown at {DISPLAY_SIZE} px (finer than the model saw)"))
    outside = section.row.get("heatmap_outside_hand", "")
    share = "" if outside == "" else f"; {float(outside):.0%} of its mass outside the hand"
    figures.append(_figure(section.heatmap_png, "heat map",
                           f"heat map over the film: where the features behind the predicted class were, "
                           f"{cells} x {cells} cells of block 4 smoothed to {DISPLAY_SIZE} px{share}; "
                           "not evidence that the reading is right"))
    return f'<div class="pics">{"".join(figures)}</div>'


def _interval_text(low: Any, high: Any, coverage: Any) -> str:
    if low == "":
        return "not calibrated"
    return f"{low} - {high} months ({float(coverage):.0%} prediction interval)"


def _difference(months: float, row: dict[str, Any]) -> str:
    if row["chronological_age_months"] == "":
        return "needs the chronological age"
    difference = months - float(row["chronological_age_months"])
    return f"{difference:+.1f} months ({difference / 12:+.2f} years)"


def _one_sex(row: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("Bone age", f'<span class="big">{html.escape(row["bone_age"])}</span> ({row["bone_age_months"]} months)'),
        ("Prediction interval", _interval_text(row["interval_low_months"], row["interval_high_months"],
                                               row["interval_coverage"])),
        ("BA - CA", _difference(float(row["bone_age_months"]), row)),
    ]


def _both_sexes(row: dict[str, Any]) -> list[tuple[str, str]]:
    """The sex head was unsure: a reading for each sex, and the request for the sex, ahead of everything else."""
    pairs = [("Sex needed", '<span class="refused">The sex was not given and the model cannot tell it from this '
                            "film (its sex head is unsure); the bone age depends on it. Give the sex for a single reading; until "
                            "then use the line below that matches the patient.</span>")]
    for name, letter in (("female", "F"), ("male", "M")):
        months = float(row[f"bone_age_months_{name}"])
        interval = _interval_text(row[f"interval_low_months_{name}"], row[f"interval_high_months_{name}"],
                                  row["interval_coverage"])
        pairs.append((f"Bone age if {name}", f'<span class="big">{letter} {years_months(months)}</span> '
                                             f"({months} months); {interval}; BA - CA {_difference(months, row)}"))
    return pairs


def _model_html(identity: dict[str, Any]) -> str:
    provenance = identity.get("provenance", {})
    trained = "".join(f"<tr><th>{html.escape(str(k).replace('_', ' '))}</th><td>{html.escape(_text(v))}</td></tr>"
                      for k, v in provenance.items()) or "<tr><td>no training record in the checkpoint</td></tr>"
    summary = _rows([
        ("Model file", html.escape(identity["file"])),
        ("SHA-256", f'<span class="small">{html.escape(identity["sha256"])}</span>'),
        ("Architecture", html.escape(f"{identity['architecture']} at {identity['image_size']} px, "
                                     f"width {identity['width']}")),
        ("Frozen blocks", ", ".join(map(str, identity.get("frozen_blocks") or [])) or "none"),
        ("Acceptance at this site", html.escape(identity.get("acceptance") or "not checked")),
        ("Prediction interval", html.escape(identity.get("interval") or "none in this checkpoint")),
    ])
    return f"<h2>Model</h2><table>{summary}</table><h2>How it was trained</h2><table>{trained}</table>"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def render_report(patient_id: str, sections: list[ImageSection], identity: dict[str, Any]) -> str:
    """The HTML page of one patient."""
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "".join(_image_html(s, identity["image_size"]) for s in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>Bone age report - {html.escape(patient_id)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>Bone age report: patient {html.escape(patient_id)}</h1>"
            f'<p class="small">generated {generated} by OssiFL</p>'
            f'<div class="review">{html.escape(REVIEW_STATEMENT)}</div>{body}'
            f'<p class="small">{html.escape(NO_SDS)}</p>{_model_html(identity)}'
            f'<div class="review">{html.escape(REVIEW_STATEMENT)}</div></body></html>')


def safe_name(text: str) -> str:
    """A file-name-safe version of an id."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or "image"


def report_path(folder: Path, patient_id: str) -> Path:
    return folder / f"{safe_name(patient_id)}.html"


def write_reports(folder: Path, sections: dict[str, list[ImageSection]], identity: dict[str, Any]) -> list[Path]:
    """Write `<folder>/<patient>.html` for each patient; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for patient_id, patient_sections in sections.items():
        path = report_path(folder, patient_id)
        path.write_text(render_report(patient_id, patient_sections, identity), encoding="utf-8")
        written.append(path)
    logger.info("wrote %d report(s) to %s", len(written), folder)
    return written
