"""`python -m proxyscale ...` is the `proxyscale` command."""
from proxyscale.orchestrator.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
