"""The bottom layer, no torch: errors, atomic files, YAML, the typed config and its keys, the optional extras,
the metrics columns and which epoch is best. Everything above may import it; it imports nothing above."""
