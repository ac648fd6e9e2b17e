from motcua.cli import main

raise SystemExit(main())
