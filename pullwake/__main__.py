from pullwake.cli import main

raise SystemExit(main())
