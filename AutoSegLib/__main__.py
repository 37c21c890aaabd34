"""`python -m AutoSegLib ...` is the same as the `autoseg` command (the Slicer module runs it this way)."""
from AutoSegLib.cli import main

raise SystemExit(main())
