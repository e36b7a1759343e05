from netpoint_metrics.cli import main

raise SystemExit(main())
