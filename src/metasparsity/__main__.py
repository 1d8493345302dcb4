from metasparsity.cli import main

raise SystemExit(main())
