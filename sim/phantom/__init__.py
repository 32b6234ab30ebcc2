"""Synthetic hand radiographs with a learnable bone-age signal, imaged by per-site profiles.

profiles (site dataclasses and presets) -> population (subject, label) -> anatomy + maturity (hand)
-> render (projection) -> acquisition (placement, scanner) -> synth (one sample) -> writer (a site on
disk, ``generate_site``). See docs/phantom.md.
"""
