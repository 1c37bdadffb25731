from inference_api.cli import main

raise SystemExit(main())
