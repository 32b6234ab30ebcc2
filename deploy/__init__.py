"""Deployment tools: certificates, site keys, the per-site report, sample configurations (docs/deployment.md)."""
