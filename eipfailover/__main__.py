from eipfailover.cli import main

raise SystemExit(main())
