from onnxfleet.cli import main

raise SystemExit(main())
