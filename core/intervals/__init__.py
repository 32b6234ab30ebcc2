"""Split-conformal prediction intervals: overall, by age band, and fitted across sites from score counts."""
