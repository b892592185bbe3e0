from lensteer.cli import main

raise SystemExit(main())
