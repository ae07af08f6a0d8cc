from agent.service.cli import main

raise SystemExit(main())
