from buildref.cli import main

raise SystemExit(main())
