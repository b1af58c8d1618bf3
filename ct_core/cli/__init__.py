"""Command-line entry points: ct-train, ct-eval, ct-sample, ct-prepare, ct-export."""
