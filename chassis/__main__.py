"""``python -m chassis``."""

from chassis.cli import main

main()
