"""Command-line entry points: typed dataclass configs turned into argparse flags, one-line errors."""
