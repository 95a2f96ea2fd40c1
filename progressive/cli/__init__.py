"""Command-line programs (each `main(argv) -> exit code`), installed as console scripts and wrapped by launch/*.py."""
