from otplug.cli import main

raise SystemExit(main())
