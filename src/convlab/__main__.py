from convlab.cli import main

raise SystemExit(main())
